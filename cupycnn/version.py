"""The library's version: one home, importable without importing the package's modules (a
checkpoint records it; `cupycnn --version` prints it)."""
__version__ = "0.1.0"

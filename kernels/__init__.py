"""CUDA C kernel sources (`*.cu`, `*.cuh`), shipped as package data `cupycnn.kernels`.

Nothing in this folder is Python: `cupycnn.runtime.get_kernel(file, name)` compiles them."""

"""What CuPy offers, recorded from a real CuPy, so that the tests can hold tests/fake_cupy.py and
the library to it on machines without CuPy (tests/test_fake_cupy_api.py).

    pip install cupy-cuda13x "nvidia-nccl-cu13>=2.27.7,<3"     # no GPU needed to import it
    python tests/cupy_api.py > tests/data/cupy-api.json

The record: CuPy's version, each class's __module__ and, for each module and class the fake
stands in for, its public names; for a callable, its parameter names (from its signature, or
for Cython functions from the signature line CuPy embeds in their docstrings), "**" where it
takes any keyword, null where neither tells.
"""
import functools
import inspect
import json
import re
import sys
from pathlib import Path

SNAPSHOT = Path(__file__).resolve().parent / "data" / "cupy-api.json"

# What the fake is made of: module and class paths, from `cupy` and `cupyx`.
MODULES = ("cupy", "cupyx", "cupy.cuda", "cupy.cuda.runtime", "cupy.cuda.graph", "cupy.cuda.nccl")
CLASSES = ("cupy.ndarray", "cupy.RawModule", "cupy.RawKernel", "cupy.cuda.Stream",
           "cupy.cuda.Event", "cupy.cuda.Device", "cupy.cuda.MemoryPool",
           "cupy.cuda.MemoryPointer", "cupy.cuda.graph.Graph", "cupy.cuda.nccl.NcclCommunicator")

DUNDERS = ("__init__", "__call__", "__version__", "__array__", "__getitem__", "__setitem__",
           "__len__", "__iter__", "__float__", "__int__", "__index__", "__bool__",
           "__enter__", "__exit__", "__array_ufunc__", "__array_function__")
_SIGNATURE_LINE = re.compile(r"^\s*[\w.]*\((.*)\)")


def parameters(obj):
    """[names] of obj's parameters ("**" for **kwargs, "*" for *args), or None if unknown."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        doc = getattr(obj, "__doc__", None) or ""
        match = _SIGNATURE_LINE.match(doc.splitlines()[0] if doc.strip() else "")
        if not match:
            return None
        names = []
        for part in match.group(1).split(","):
            part = part.split("=")[0].strip()
            if not part:
                continue
            if part.startswith("**"):
                names.append("**")
            elif part.startswith("*"):
                names.append("*")
            else:
                names.append(part.split()[-1])      # "intptr_t sendbuf" -> sendbuf
        return [n for n in names if n != "self"]
    names = []
    for p in sig.parameters.values():
        if p.kind is p.VAR_KEYWORD:
            names.append("**")
        elif p.kind is p.VAR_POSITIONAL:
            names.append("*")
        elif p.name != "self":
            names.append(p.name)
    return names


def _resolve(path):
    import importlib
    parts = path.split(".")
    obj = importlib.import_module(parts[0])
    for i, part in enumerate(parts[1:], 1):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            obj = importlib.import_module(".".join(parts[:i + 1]))
    return obj


def record():
    import cupy
    out = {"cupy_version": cupy.__version__, "objects": {}}
    for path in MODULES + CLASSES:
        obj = _resolve(path)
        names = {}
        for name in dir(obj):
            if name.startswith("_") and name not in DUNDERS:
                continue
            try:
                value = getattr(obj, name)
            except Exception:                 # a property that needs a GPU
                names[name] = None
                continue
            names[name] = parameters(value) if callable(value) else None
        if inspect.isclass(obj):
            out.setdefault("class_modules", {})[path] = obj.__module__   # what isinstance-free
            names["__init__"] = parameters(obj)                          # checks look at
            if "__call__" in names and names["__call__"] is None:
                names["__call__"] = parameters(obj.__call__)
        out["objects"][path] = names
    return out


@functools.lru_cache(maxsize=None)
def load():
    """The snapshot, read once per process (every fake GPU asks; do not modify it)."""
    return json.loads(SNAPSHOT.read_text(encoding="utf-8"))


if __name__ == "__main__":
    json.dump(record(), sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")

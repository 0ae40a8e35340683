"""tests/fake_cupy.py and the library against what a real CuPy offers (tests/data/cupy-api.json,
recorded from CuPy by tests/cupy_api.py): the cuda variants of the tests run on the fake
wherever there is no GPU, so passing there must not lean on anything CuPy lacks.

- Every public name the fake's modules and classes define is CuPy's, and every parameter a fake
  function names is a parameter of CuPy's (a keyword the library passes and CuPy refuses
  would fail only on a GPU).
- What the fake hands on to NumPy (`cupy.<function>` it does not define itself) exists in CuPy:
  a NumPy function CuPy lacks is refused by the fake as by CuPy.
- Every `cupy.*` / `cupyx.*` name the library, the benchmarks and the examples use exists in
  CuPy.
"""
import ast
import inspect
import types
from pathlib import Path

import pytest

import cupy_api
import fake_cupy

ROOT = Path(__file__).resolve().parent.parent
API = cupy_api.load()["objects"]


def _fakes():
    """{snapshot path: the fake's object} for every module and class the snapshot records."""
    from mpi4py import MPI
    import fake_nccl
    cupy, cupyx = fake_nccl.make(MPI.COMM_SELF, device_count=1)
    found = {}
    for path in cupy_api.MODULES + cupy_api.CLASSES:
        obj = {"cupy": cupy, "cupyx": cupyx}[path.split(".")[0]]
        for part in path.split(".")[1:]:
            obj = getattr(obj, part)
        found[path] = obj
    return found


FAKES = _fakes()


def _own_names(obj):
    names = vars(obj) if isinstance(obj, (types.ModuleType, types.SimpleNamespace)) or \
        inspect.isclass(obj) else {}
    return {n: v for n, v in names.items()
            if (not n.startswith("_") or n in cupy_api.DUNDERS) and not n.startswith("__py")}


# The fake's own additions, named: test hooks that no code of the library touches (the last
# test shows the library passes no keyword CuPy lacks).
FAKE_ONLY = {"cupy": {"log"}, "cupy.cuda.runtime": {"free"}}
FAKE_ONLY_PARAMETERS = {("cupy.cuda", "Stream"): {"name"}, ("cupy.cuda.Stream", "__init__"):
                        {"name"}}                      # a stream's name in the fake's log


@pytest.mark.parametrize("path", sorted(FAKES))
def test_every_name_the_fake_defines_is_cupys(path):
    real = API[path]
    extra = sorted(n for n in set(_own_names(FAKES[path])) - set(real) -
                   FAKE_ONLY.get(path, set()) -
                   {"__module__", "__dict__", "__weakref__", "__doc__", "__qualname__"}
                   if f"{path}.{n}" not in API)            # a submodule (cupy.cuda.nccl)
    assert not extra, f"{path}: the fake defines {extra}, which CuPy {cupy_api.load()['cupy_version']} has not"


def test_the_fake_classes_live_in_cupys_modules():
    modules = cupy_api.load()["class_modules"]
    wrong = [f"{path}: {FAKES[path].__module__}, CuPy's {module}"
             for path, module in modules.items()
             if isinstance(FAKES[path], type) and FAKES[path].__module__ != module]
    assert not wrong and len(modules) >= 9, wrong


@pytest.mark.parametrize("path", sorted(FAKES))
def test_every_parameter_a_fake_function_names_is_cupys(path):
    wrong = []
    for name, value in _own_names(FAKES[path]).items():
        real = API[path].get(name)
        if not callable(value) or real is None or "**" in real:
            continue
        if isinstance(value, (staticmethod, classmethod)):
            value = value.__func__
        try:
            params = inspect.signature(value).parameters.values()
        except (TypeError, ValueError):
            continue
        for p in params:
            if p.kind in (p.VAR_KEYWORD, p.VAR_POSITIONAL) or p.name in ("self", "cls"):
                continue
            if p.name not in real and p.default is not inspect.Parameter.empty and \
                    p.name not in FAKE_ONLY_PARAMETERS.get((path, name), ()):
                wrong.append(f"{name}({p.name}=...): CuPy's takes ({', '.join(real)})")
    assert not wrong, f"{path}: " + "; ".join(wrong)


def test_what_the_fake_hands_on_to_numpy_is_in_cupy():
    cupy = FAKES["cupy"]
    assert callable(cupy.take) and callable(cupy.concatenate)
    import numpy as np
    lacking = [n for n in dir(np) if callable(getattr(np, n)) and not n.startswith("_") and
               n not in API["cupy"]]
    assert "fromregex" in lacking and len(lacking) > 10    # NumPy's, not CuPy's
    for name in lacking:
        with pytest.raises(AttributeError, match=f"CuPy .* has no {name!r}"):
            getattr(cupy, name)


def _chains(tree):
    """(dotted name, line, call or None) of every attribute chain rooted at a name bound to
    cupy/cupyx; `call` is the ast.Call when the chain is called."""
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] in ("cupy", "cupyx"):
                    aliases[a.asname or a.name.split(".")[0]] = a.name if a.asname else \
                        a.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module and \
                node.module.split(".")[0] in ("cupy", "cupyx"):
            for a in node.names:
                aliases[a.asname or a.name] = f"{node.module}.{a.name}"
    calls = {id(node.func): node for node in ast.walk(tree) if isinstance(node, ast.Call)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            parts, inner = [], node
            while isinstance(inner, ast.Attribute):
                parts.append(inner.attr)
                inner = inner.value
            if isinstance(inner, ast.Name) and inner.id in aliases:
                yield (".".join([aliases[inner.id]] + parts[::-1]), node.lineno,
                       calls.get(id(node)))
    for alias, full in aliases.items():
        yield full, 0, None


def _parameters(chain):
    """The recorded parameters of the callable `chain` names (a class: its __init__), or None."""
    if chain in API:
        return API[chain].get("__init__")
    head, _, name = chain.rpartition(".")
    return API.get(head, {}).get(name)


def _known(chain):
    """True if CuPy has `chain` (as far as the snapshot records: up to a recorded class)."""
    parts = chain.split(".")
    for cut in range(len(parts), 0, -1):
        head = ".".join(parts[:cut])
        if head in API:
            if cut == len(parts):
                return True
            return parts[cut] in API[head] or head in cupy_api.CLASSES and cut + 1 < len(parts)
    return False


def test_every_cupy_name_and_keyword_the_code_uses_is_cupys():
    files = [p for d in ("cupycnn", "benchmarks", "examples") for p in (ROOT / d).rglob("*.py")]
    unknown, keywords, checked = [], [], 0
    for f in files:
        for chain, line, call in _chains(ast.parse(f.read_text(encoding="utf-8"))):
            where = f"{f.relative_to(ROOT)}:{line}: {chain}"
            if not _known(chain):
                unknown.append(where)
            params = _parameters(chain) if call is not None else None
            if params is not None and "**" not in params:
                checked += 1
                keywords += [f"{where}({k.arg}=...)" for k in call.keywords
                             if k.arg is not None and k.arg not in params]
    assert not unknown, "names CuPy has not:\n" + "\n".join(sorted(set(unknown)))
    assert not keywords, "keywords CuPy's functions do not take:\n" + "\n".join(keywords)
    assert checked > 20                                # the calls were found

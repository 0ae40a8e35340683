"""Every kernel keeps its values in registers: ptxas (nvcc -cubin -Xptxas -v with CuPy's options,
cupycnn.machine_code) reports no stack frame and no local-memory spill for sm_80 or sm_90, in
every variant a kernel file is built in (the tensor-core files: each tile configuration and
precision of ops/tiles.py), except the kernels listed in SPILLS_ALLOWED, each with its reason
and its exact figures (so that a larger spill, or a new one, fails).

conv2d_forward spilled 8 bytes on sm_90 until its __launch_bounds__ asked for
CONV_FORWARD_MIN_BLOCKS resident blocks (see the comment there)."""
import pytest

from cupycnn import machine_code, runtime

_MISSING = machine_code.missing_tools()
pytestmark = pytest.mark.skipif(_MISSING is not None, reason=f"{_MISSING}")

# kernel: ((stack, spill stores, spill loads) bytes on every architecture, why).
SPILLS_ALLOWED = {
    "adam_step": ((8, 4, 16), "IEEE division and square root (sqrtf(v), the two divisions of the "
                  "update) have slow paths that are subroutine calls; ptxas saves one register "
                  "across them on the stack: stored once before the element loop and reloaded "
                  "once after its remainder iterations (one STL; four LDL, one in each copy of "
                  "the loop ptxas specialises; none inside a loop)"),
}

CASES = [pytest.param(file, label, defines, arch, id=f"{file}-{label.replace(' ', '-')}-{arch}")
         for file in runtime.kernel_files() for label, defines in machine_code.variants(file)
         for arch in machine_code.ARCHS]


@pytest.mark.parametrize("file, label, defines, arch", CASES)
def test_kernels_do_not_spill(file, label, defines, arch):
    kernels = machine_code.inspect(file, arch, defines, label, sass=False)
    assert [k.kernel for k in kernels] == machine_code.entry_points(file), "a kernel is missing"
    spilled = {k.kernel: (k.stack, k.spill_stores, k.spill_loads) for k in kernels
               if (k.stack, k.spill_stores, k.spill_loads) != SPILLS_ALLOWED.get(
                   k.kernel, ((0, 0, 0),))[0]}
    assert not spilled, (f"{file}.cu ({label}, {arch}): (stack, spill stores, spill loads) "
                         f"bytes {spilled}; allowed only {SPILLS_ALLOWED}")


def test_the_allowed_spill_is_outside_the_loop_and_the_report_sees_it():
    """adam_step's spill is what SPILLS_ALLOWED says, and the parser reads spills at all."""
    (adam,) = [k for k in machine_code.inspect("optim", "sm_90") if k.kernel == "adam_step"]
    assert (adam.stack, adam.spill_stores, adam.spill_loads) == SPILLS_ALLOWED["adam_step"][0]
    assert adam.count("STL") == 1 and adam.count("LDL") == 4, adam.opcodes


def test_the_conv2d_kernels_are_all_inspected():
    names = {k.kernel for k in machine_code.inspect("conv2d", "sm_90", sass=False)}
    assert {"conv2d_forward", "conv2d_backward_input", "conv2d_backward_weight"} <= names

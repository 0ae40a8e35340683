"""conv2d.cu's kernels keep everything in registers: ptxas (nvcc -cubin -Xptxas -v, CuPy's -ftz=true)
reports no local-memory spill for sm_80 or sm_90. conv2d_forward spilled 8 bytes on sm_90 until its
__launch_bounds__ asked for CONV_FORWARD_MIN_BLOCKS resident blocks (see the comment there)."""
import re
import shutil
import subprocess

import pytest

from cupycnn import runtime

NVCC = shutil.which("nvcc")
pytestmark = pytest.mark.skipif(NVCC is None, reason="nvcc is not installed")

_FUNCTION = re.compile(r"Function properties for (\w+)\n\s*(\d+) bytes stack frame, "
                       r"(\d+) bytes spill stores, (\d+) bytes spill loads")


def ptxas_resources(file, arch, tmp_path):
    """{kernel: (stack, spill stores, spill loads)} in bytes, as ptxas reports them."""
    source = tmp_path / f"{file}.cu"
    source.write_text(runtime.kernel_source(file))   # the #include lines expanded, as CuPy sees it
    result = subprocess.run([NVCC, "-cubin", f"-arch={arch}", "-std=c++17", "-ftz=true",
                             "-Xptxas", "-v", str(source), "-o", str(tmp_path / f"{arch}.cubin")],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    return {m[1]: tuple(int(v) for v in m.groups()[1:]) for m in _FUNCTION.finditer(result.stderr)}


@pytest.mark.parametrize("arch", ["sm_80", "sm_90"])
def test_conv2d_kernels_do_not_spill(arch, tmp_path):
    resources = ptxas_resources("conv2d", arch, tmp_path)
    assert {"conv2d_forward", "conv2d_backward_input", "conv2d_backward_weight"} <= set(resources)
    spilled = {k: r for k, r in resources.items() if any(r)}
    assert not spilled, f"{arch}: (stack, spill stores, spill loads) bytes: {spilled}"

"""Every kernel file compiles with NVRTC for sm_80 (A100) and sm_90 (H100), without a GPU, with
the option set CuPy's RawModule really uses (CuPy 13.6 and 14.2: -ftz=true and
--device-as-default-execution-space added to ours; nvrtc.CUPY_OPTIONS)."""
import pytest

from cupycnn import nvrtc, runtime
from cupycnn.ops import tiles

ARCHS = ("sm_80", "sm_90")


# The distinct option sets (13.6's and 14.2's are the same today: each compiled once).
OPTION_SETS = {}
for _version, _options in sorted(nvrtc.CUPY_OPTIONS.items()):
    OPTION_SETS.setdefault(_options, []).append(_version)


@pytest.mark.parametrize("options", list(OPTION_SETS),
                         ids=["cupy" + "+".join(v) for v in OPTION_SETS.values()])
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("source", runtime.kernel_files())
def test_kernel_file_compiles_with_nvrtc(source, arch, options, record_property):
    # The tensor-core files are built once per tile configuration and precision (ops/tiles.py):
    # NVRTC compiles the first for sm_80 and the last for sm_90 here; the SASS test
    # (test_kernel_report.py) compiles every one for both.
    variants = tiles.variants(source)
    defines = variants[0 if arch == "sm_80" else -1]
    result = nvrtc.compile_source(runtime.kernel_source(source), f"{source}.cu", arch,
                                  options + runtime.define_options(defines))
    assert result.cubin_bytes > 0
    assert result.entries, f"{source}.cu: no kernel entry points in the PTX"
    # Every `extern "C" __global__` function of the file is an entry point of the module.
    from conftest import _all_kernels
    declared = {k for f, k in _all_kernels() if f == f"{source}.cu"}
    assert declared <= set(result.entries), f"missing entries: {declared - set(result.entries)}"
    assert "warning" not in result.log.lower(), result.log
    record_property("nvrtc_compiled", f"{source}.cu|{arch}")


def test_nvrtc_reports_errors_with_the_log():
    with pytest.raises(nvrtc.NVRTCCompileError, match="undefined"):
        nvrtc.compile_source('extern "C" __global__ void k() { undefined_name = 1; }', "bad.cu")


def test_cupy_option_sets_flush_denormals():
    """-ftz=true is in both CuPy sets, and it changes the code: a float division's PTX is the
    .ftz form."""
    assert all("-ftz=true" in options for options in nvrtc.CUPY_OPTIONS.values())
    source = 'extern "C" __global__ void k(float* x) { x[0] = x[1] / x[2]; }'
    flushed = nvrtc.compile_source(source, "k.cu", "sm_90", nvrtc.CUPY_OPTIONS["14.2"])
    plain = nvrtc.compile_source(source, "k.cu", "sm_90", ("--std=c++17",))
    assert ".ftz.f32" in flushed.ptx and ".ftz.f32" not in plain.ptx

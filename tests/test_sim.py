"""The emulator itself: barriers, warp primitives, atomics, shared memory, thread orders,
deadlock reports, printf, argument checks, the build cache and its fallbacks."""
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import cupycnn
from cupycnn import runtime, sim

PROBES = Path(__file__).parent / "kernels" / "emulator_probes.cu"
ORDERS = ("natural", "reversed", "random")
i32, f32 = np.int32, np.float32


@pytest.fixture
def probes():
    cupycnn.use("sim")
    return runtime.load_module(path=PROBES, name_expressions=["axpy<float>", "axpy<double>"])


def _run_python(code, env_extra=None, timeout=240):
    env = dict(os.environ, **(env_extra or {}))
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, env=env, timeout=timeout)


@pytest.mark.parametrize("order", ORDERS)
@pytest.mark.parametrize("n, grid, block", [(1 << 16, 64, 256), (12345, 7, 96), (1, 1, 32)])
def test_block_sum_with_shuffles_dynamic_shared_and_atomics(probes, rng, order, n, grid, block):
    sim.set_thread_order(order, seed=1)
    x = rng.standard_normal(n).astype(f32)
    out = np.zeros(1, f32)
    probes.get_function("shuffle_block_sum")((grid,), (block,), (x, out, i32(n)),
                                             shared_mem=4 * (block // 32))
    assert abs(out[0] - x.sum(dtype=np.float64)) < 1e-4 * np.sqrt(n)


@pytest.mark.parametrize("order", ORDERS)
def test_warp_shuffles_votes_and_counting_barriers(probes, rng, order):
    sim.set_thread_order(order, seed=2)
    v = rng.permutation(64).astype(np.int32)
    out = np.zeros(192, np.int32)
    probes.get_function("warp_ops")((1,), (64,), (v, out))
    for t in range(64):
        lane, base = t % 32, 32 * (t // 32)
        warp = v[base:base + 32]
        up = v[t - 1] if lane % 8 >= 1 else v[t]
        down = v[t + 2] if lane + 2 < 32 else v[t]
        expected = (warp[3] + 10 * up + 100 * v[base + (lane ^ 4)] + 1000 * int((warp > 60).any())
                    + 10000 + 100000 * down)
        assert out[t] == expected, f"thread {t}"
        ballot = sum(1 << k for k in range(32) if warp[k] % 3 == 0)
        assert out[128 + t] == np.int32(np.uint32(ballot)), f"ballot, thread {t}"
    assert (out[64:128] == int((v % 2).sum()) * 100 + 10 + int((v == 5).any())).all()


@pytest.mark.parametrize("order", ORDERS)
def test_static_shared_in_device_template_device_globals_and_int_atomics(probes, rng, order):
    sim.set_thread_order(order, seed=3)
    n = 1000
    x = rng.standard_normal(n).astype(f32)
    y = np.full(n, np.nan, f32)
    imax = np.zeros(1, np.int32)
    probes.get_function("normalise_by_block_max")((8,), (128,), (x, y, imax, i32(n)))
    sq = np.concatenate([x * x, np.zeros(24, f32)]).reshape(8, 128)
    np.testing.assert_allclose(y, (sq / sq.max(1, keepdims=True)).ravel()[:n], rtol=1e-6)
    assert imax[0] == 7
    counter = np.zeros(1, np.uint32)
    probes.get_function("read_and_reset_counter")((1,), (1,), (counter,))
    assert counter[0] == 8


@pytest.mark.parametrize("order", ORDERS)
def test_early_exit_before_barrier_and_ballot(probes, rng, order):
    sim.set_thread_order(order, seed=4)
    n = 1000
    flags = (rng.random(n) < 0.3).astype(np.int32)
    out = np.zeros(1, np.uint32)
    probes.get_function("early_exit_ballot")((4,), (256,), (flags, out, i32(n)))
    assert out[0] == flags.sum()


def test_templates_through_name_expressions(probes, rng):
    for dtype, name in ((np.float32, "axpy<float>"), (np.float64, "axpy<double>")):
        x, y = rng.standard_normal(300).astype(dtype), rng.standard_normal(300).astype(dtype)
        expected = 2.5 * x.astype(np.float64) + y
        probes.get_function(name)((2,), (256,), (dtype(2.5), x, y, i32(300)))
        # (a multiply-add may be fused, as on a GPU: one rounding of the exact value)
        np.testing.assert_allclose(y, expected, rtol=0, atol=4 * np.finfo(dtype).eps
                                   * np.abs(expected).max())


def test_missing_barrier_is_caught_by_some_thread_order(probes, rng):
    n = 256 * 16
    x = rng.standard_normal(n).astype(f32)
    expected = x.reshape(16, 256).copy()
    expected[:, 1:], expected[:, 0] = expected[:, :-1], 0
    kernel = probes.get_function("shift_right")
    wrong = {}
    for order in ORDERS:
        sim.set_thread_order(order, seed=5)
        for use_barrier in (1, 0):
            y = np.full(n, np.nan, f32)
            kernel((16,), (256,), (x, y, i32(n), i32(use_barrier)))
            if use_barrier:
                np.testing.assert_array_equal(y, expected.ravel())   # the correct kernel passes
            else:
                wrong[order] = not np.array_equal(y, expected.ravel())
    assert any(wrong.values()), f"the race went unnoticed in every order: {wrong}"
    assert wrong["reversed"] and wrong["random"]


def test_divergent_barrier_is_reported_not_hung():
    # In a child process with a time limit: a hang would fail the test instead of the suite.
    result = _run_python(f"""
        import numpy as np, cupycnn
        from cupycnn import runtime, sim
        cupycnn.use("sim")
        m = runtime.load_module(path={str(PROBES)!r})
        try:
            m.get_function("divergent_barrier")((2,), (32,), (np.zeros(64, np.float32),))
        except sim.SimError as e:
            print("REPORTED:", e)
    """, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "REPORTED: divergent_barrier" in result.stdout
    assert "deadlock in block (0,0,0)" in result.stdout
    assert "16 wait at __syncthreads" in result.stdout


def test_uninitialised_dynamic_shared_memory_reads_nan(probes):
    out = np.zeros(256, f32)
    probes.get_function("read_uninitialised_shared")((2,), (128,), (out,), shared_mem=512)
    assert np.isnan(out).all()


def test_static_shared_memory_is_poisoned_at_every_block(probes):
    kernel = probes.get_function("read_uninitialised_static_shared")
    out = np.zeros(128, f32)
    kernel((2,), (64,), (out, i32(1)))
    np.testing.assert_array_equal(out.reshape(2, 64), np.tile(np.roll(np.arange(64.0), -1), (2, 1)))
    kernel((2,), (64,), (out, i32(0)))      # the previous launch's values must not leak through
    assert np.isnan(out).all()


def test_static_shared_memory_in_templates_is_poisoned_at_every_block(probes):
    """g++ ignores the section attribute of statics in templates (a function template, a class
    template's member); the emulator records those arrays where they are declared, so a read
    of one before any thread of the block wrote it still reads NaN."""
    kernel = probes.get_function("read_uninitialised_template_shared")
    out = np.zeros(256, f32)
    kernel((2,), (64,), (out, i32(1)))
    expected = np.tile(np.roll(np.arange(64.0), -1), 2)
    np.testing.assert_array_equal(out, np.repeat(expected, 2))
    kernel((2,), (64,), (out, i32(0)))      # the previous launch's values must not leak through
    assert np.isnan(out).all()


def test_every_one_line_static_shared_declaration_is_registered():
    code = ("__shared__ float a[4][TILE + 1];  // a comment: __shared__ b;\n"
            "  __shared__ __align__(16) Stage stages[STAGES]; int x;\n"
            "// __shared__ float commented_out[3];\n"
            "extern SIMT_DYNAMIC_SHARED float dyn[];")
    out = sim.module.register_static_shared(code).split("\n")
    assert out[0] == ("__shared__ float a[4][TILE + 1]; SIMT_SHARED_REGISTER(a)  // a comment: "
                      "__shared__ b;")
    assert out[1] == ("  __shared__ __align__(16) Stage stages[STAGES]; "
                      "SIMT_SHARED_REGISTER(stages) int x;")
    assert out[2:] == code.split("\n")[2:]
    # Inside a function: declared under another name, bound to its own (see simt.h).
    code = ("__global__ void k() {\n"
            "  __shared__ float a[4][TILE + 1];\n"
            "  if (x) { __shared__ int total; }\n"
            "}\n"
            "__shared__ float file_scope[2];")
    out = sim.module.register_static_shared(code).split("\n")
    assert out[1] == ("  __shared__ float SIMT_SHARED_NAME(a)[4][TILE + 1]; SIMT_SHARED_ALIAS(a) "
                      "SIMT_SHARED_REGISTER(a)")
    assert out[2] == ("  if (x) { __shared__ int SIMT_SHARED_NAME(total); "
                      "SIMT_SHARED_ALIAS(total) SIMT_SHARED_REGISTER(total) }")
    assert out[4] == "__shared__ float file_scope[2]; SIMT_SHARED_REGISTER(file_scope)"


def test_kernel_printf_reaches_stdout(probes, capfd):
    probes.get_function("hello")((3,), (32,), (i32(7),))
    printed = capfd.readouterr().out
    for block in range(3):
        assert f"hello from block {block}, tag 7" in printed


def test_random_order_differs_between_launches_but_repeats_with_the_seed(probes, rng):
    n = 256 * 8
    x = rng.standard_normal(n).astype(f32)
    kernel = probes.get_function("shift_right")

    def outputs(seed):
        sim.set_thread_order("random", seed=seed)
        ys = []
        for _ in range(2):
            y = np.zeros(n, f32)
            kernel((8,), (256,), (x, y, i32(n), i32(0)))
            ys.append(y)
        return ys

    a1, a2 = outputs(11)
    b1, b2 = outputs(11)
    np.testing.assert_array_equal(a1, b1)
    np.testing.assert_array_equal(a2, b2)
    assert not np.array_equal(a1, a2)


@pytest.mark.parametrize("args, message", [
    (lambda x, y: (x, y, 5), "Python int"),
    (lambda x, y: (x.astype(np.float64), y, i32(5)), "float64 array"),
    (lambda x, y: (x, y, np.float32(5)), "signed integer"),
    (lambda x, y: (x, y[::2], i32(5)), "not C-contiguous"),
    (lambda x, y: (x, np.broadcast_to(y, y.shape), i32(5)), "read-only"),
    (lambda x, y: (x, y), "takes 3 arguments"),
    (lambda x, y: (i32(1), y, i32(5)), "pointer"),
])
def test_arguments_are_checked_against_parameters(rng, args, message):
    cupycnn.use("sim")
    kernel = runtime.get_kernel("elementwise", "relu_forward")
    x, y = rng.standard_normal(10).astype(f32), np.zeros(10, f32)
    with pytest.raises(TypeError, match=message):
        kernel((1,), (32,), args(x, y))


def test_bad_launch_configuration_is_an_error(probes):
    with pytest.raises(sim.SimError, match="at most 1024 threads per block"):
        probes.get_function("hello")((1,), (2048,), (i32(0),))


def test_compile_errors_name_the_file_and_line(tmp_path):
    cupycnn.use("sim")
    bad = tmp_path / "broken.cu"
    bad.write_text('extern "C" __global__ void k(float* y) {\n  y[0] = undefined_thing;\n}\n')
    with pytest.raises(sim.SimBuildError, match=r"broken\.cu:2"):
        runtime.load_module(path=bad)


def test_build_cache_is_reused(tmp_path, monkeypatch):
    monkeypatch.setenv("CUPYCNN_CACHE_DIR", str(tmp_path))
    code = 'extern "C" __global__ void k(float* y) { y[threadIdx.x] = 1.0f; }'
    first = sim.Module(code, name="cache_probe.cu")
    stamp = first.library_path.stat().st_mtime_ns
    second = sim.Module(code, name="cache_probe.cu")
    assert second.library_path == first.library_path
    assert second.library_path.stat().st_mtime_ns == stamp
    assert first.library_path.parent == tmp_path / "sim"
    changed = sim.Module(code.replace("1.0f", "2.0f"), name="cache_probe.cu")
    assert changed.library_path != first.library_path


def test_cache_key_holds_the_flags_and_the_cpu_features(tmp_path, monkeypatch):
    """Optimised by default (-O3, and -march=native where g++ takes it); another CPU's
    features, or other flags, are another library."""
    monkeypatch.setenv("CUPYCNN_CACHE_DIR", str(tmp_path))
    code = 'extern "C" __global__ void k(float* y) { y[threadIdx.x] = 3.0f; }'
    base = sim.Module(code, name="key_probe.cu", threads=1)
    assert "-O3" in base.build_flags
    base_library = base.library_path
    flags, features = sim.module._native_flags()
    if flags:
        assert "-march=native" in base.build_flags and features
        monkeypatch.setattr(sim.module, "_native", (flags, features + " -mno-such-feature"))
        assert sim.Module(code, name="key_probe.cu", threads=1).library_path != base_library
    monkeypatch.setenv("CUPYCNN_SIM_OPT", "-O1 -g")
    debug = sim.Module(code, name="key_probe.cu", threads=1)
    assert "-O1" in debug.build_flags and "-O3" not in debug.build_flags
    assert debug.library_path != base_library
    y = np.zeros(32, np.float32)
    debug.get_function("k")((1,), (32,), (y,))
    assert (y == 3).all()


ROUNDINGS = r"""
extern "C" __global__ void plain(const float* a, float* out) {
  out[0] = a[0] * a[1] + a[2];                 // contracted into an FMA (the product's one use)
}
extern "C" __global__ void roundings(const float* a, float* out) {
  const float x = a[0], y = a[1], z = a[2];
  out[1] = __fadd_rn(__fmul_rn(x, y), z);      // never fused
  out[2] = __fadd_rn(x * y, z);
  out[3] = __fmul_rn(x, y) + z;
  out[4] = __fmaf_rn(x, y, z);                 // one rounding
}
"""


@pytest.mark.parametrize("threads", [1, 2])
def test_multiply_adds_are_fused_but_not_the_rounded_intrinsics(threads):
    """The default build contracts a * b + c into an FMA as nvcc does (--fmad=true);
    __fmul_rn and __fadd_rn keep their own roundings (augment.cu's geometry is the same bits as
    NumPy's through them). x = y = 1 + 2^-12, z = -(1 + 2^-11): x y + z is 2^-24 exactly, and 0
    when the product is rounded first (to 1 + 2^-11, the tie to even)."""
    module = sim.Module(ROUNDINGS, name="roundings_probe.cu", threads=threads)
    x = 1 + 2.0 ** -12
    out = np.full(5, np.nan, np.float32)
    a = np.array([x, x, -(1 + 2.0 ** -11)], f32)
    module.get_function("plain")((1,), (1,), (a, out))
    module.get_function("roundings")((1,), (1,), (a, out))
    assert out[1:4].tolist() == [0.0, 0.0, 0.0]
    assert out[4] == 2.0 ** -24
    assert "-ffp-contract=fast" in module.build_flags
    if "-mfma" in sim.module._native_flags()[1].split():
        assert out[0] == 2.0 ** -24                  # contraction is on: the above means something


def test_blocks_run_on_every_core_by_default(monkeypatch):
    monkeypatch.delenv("CUPYCNN_SIM_THREADS", raising=False)
    sim.set_threads(None)
    assert sim.get_threads() == len(os.sched_getaffinity(0))
    monkeypatch.setenv("CUPYCNN_SIM_THREADS", "3")
    sim.set_threads(None)                      # the variable is read again
    assert sim.get_threads() == 3
    sim.set_threads(2)
    with sim.threads(1):
        assert sim.get_threads() == 1
    assert sim.get_threads() == 2
    sim.set_threads(None)
    assert sim.get_threads() == 3
    with pytest.raises(ValueError, match="at least 1"):
        sim.set_threads(0)
    monkeypatch.setenv("CUPYCNN_SIM_THREADS", "many")
    sim.set_threads(None)
    with pytest.raises(ValueError, match="CUPYCNN_SIM_THREADS"):
        sim.get_threads()
    monkeypatch.delenv("CUPYCNN_SIM_THREADS")
    sim.set_threads(None)


def test_concurrent_builds_of_one_module_are_safe(tmp_path):
    """Four processes (as four MPI ranks would) build the same module into an empty cache at
    once: all succeed, and one library results."""
    code = f"""
        import numpy as np, cupycnn
        from cupycnn import runtime
        cupycnn.use("sim")
        m = runtime.load_module(path={str(PROBES)!r})
        x = np.arange(64, dtype=np.float32); out = np.zeros(1, np.float32)
        m.get_function("shuffle_block_sum")((1,), (64,), (x, out, np.int32(64)), shared_mem=8)
        print("SUM", out[0])
    """
    env = dict(os.environ, CUPYCNN_CACHE_DIR=str(tmp_path))
    procs = [subprocess.Popen([sys.executable, "-c", textwrap.dedent(code)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, err
        assert "SUM 2016.0" in out
    libraries = list((tmp_path / "sim").glob("*.so"))
    assert len(libraries) == 1, libraries
    assert not list((tmp_path / "sim").glob("*.part"))


@pytest.mark.parametrize("env", [{"CUPYCNN_SIM_UCONTEXT": "1"}, {"CUPYCNN_SIM_THREADS": "2"}],
                         ids=["ucontext-fallback", "openmp-2-threads"])
def test_portable_fiber_switch_and_openmp_builds(tmp_path, env):
    code = f"""
        import os, numpy as np, cupycnn
        from cupycnn import runtime, sim
        cupycnn.use("sim")
        m = runtime.load_module(path={str(PROBES)!r})
        for order in sim.ORDERS:
            sim.set_thread_order(order, seed=1)
            rng = np.random.default_rng(0)
            x = rng.standard_normal(40000).astype(np.float32); out = np.zeros(1, np.float32)
            m.get_function("shuffle_block_sum")((16,), (256,), (x, out, np.int32(x.size)),
                                                shared_mem=32)
            assert abs(out[0] - x.sum(dtype=np.float64)) < 1e-2, (order, out[0])
            v = np.arange(64, dtype=np.int32); o = np.zeros(192, np.int32)
            m.get_function("warp_ops")((1,), (64,), (v, o))
            assert (o[64:128] == 32 * 100 + 10 + 1).all()
        assert sim.get_threads() == int(os.environ.get("CUPYCNN_SIM_THREADS", "1"))
        print("OK", " ".join(m._raw.build_flags))
    """
    result = _run_python(code, dict(env, CUPYCNN_CACHE_DIR=str(tmp_path)))
    assert result.returncode == 0, result.stderr
    flag = "-DSIMT_UCONTEXT" if "CUPYCNN_SIM_UCONTEXT" in env else "-fopenmp"
    assert "OK" in result.stdout and flag in result.stdout


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_a_model_gives_the_same_bits_on_two_os_threads_as_on_one(precision):
    """The multi-core build (its shared memory per OS thread, bound once per emulated thread)
    computes what the one-thread build does: a ResNet-18's forward and backward, the
    tensor-core kernels too under bf16."""
    from cupycnn import models
    cupycnn.use("sim")
    previous = cupycnn.get_precision()
    cupycnn.set_precision(precision)
    try:
        model = models.resnet18(10, stem="cifar", width=8)
        x = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
        out = []
        for threads in (1, 2):
            with sim.threads(threads):
                y = model.forward(cupycnn.asarray(x), training=False)
                dx = model.backward(cupycnn.asarray(np.ones(y.shape, np.float32)))
            out.append((cupycnn.asnumpy(y), cupycnn.asnumpy(dx)))
        for a, b in zip(*out):
            np.testing.assert_array_equal(a, b)
            assert np.abs(a).max() > 0
    finally:
        cupycnn.set_precision(previous)

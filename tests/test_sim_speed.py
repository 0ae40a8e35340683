"""benchmarks/sim_speed.py times each build it names: its kernels swapped in where the ops find
them (runtime.kernel_builds), every timed launch checked to have run that build's own library,
and a missed swap stops the run (the earlier table timed the default build three times)."""
import contextlib
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from cupycnn import runtime, sim

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import sim_speed  # noqa: E402

SMALL = ["--rounds", "1", "--batch", "1", "--gemm", "64", "--threads", "2",
         "--kernels", "sgemm_nn", "--no-barriers"]


def test_each_build_is_timed_on_its_own_libraries():
    work, compared, results, cpu = sim_speed.time_kernels(sim_speed.parse_args(SMALL))
    assert list(work) == ["sgemm_nn"]
    assert list(compared) == ["-O2, 1 thread", "default flags, 1 thread", "default, 2 threads"]
    paths = {}
    for name, build in compared.items():
        libraries = build.libraries()
        assert build.launches >= 2 and libraries          # the warm-up and the timed round
        assert all(b.launches > 0 for b in libraries)
        paths[name] = {b.library_path for b in libraries}
        for b in libraries:
            assert ("-fopenmp" in b.flags) == (build.threads > 1)
            assert b.module.threads() == build.threads
        assert results[("sgemm_nn", name)] > 0 and cpu[("sgemm_nn", name)] > 0
    assert "-O2" in compared["-O2, 1 thread"].libraries()[0].flags
    assert "-O3" not in compared["-O2, 1 thread"].libraries()[0].flags
    assert not set.intersection(*paths.values())          # three builds, three libraries


def test_a_missed_substitution_stops_the_run(monkeypatch):
    # The old failure: the swap misses and every "build" launches the default module.
    monkeypatch.setattr(runtime, "kernel_builds", lambda label, make: contextlib.nullcontext())
    with pytest.raises(sim_speed.BuildMissed, match="sgemm_nn timed as build '-O2, 1 thread'.*"
                                                     "the build substitution missed"):
        sim_speed.time_kernels(sim_speed.parse_args(SMALL))


PROBE = r"""
#include <sys/syscall.h>
extern "C" __global__ void where(int* out) {
  out[2 * blockIdx.x] = (int)syscall(SYS_gettid);
#ifdef _OPENMP
  out[2 * blockIdx.x + 1] = omp_get_num_threads();
#else
  out[2 * blockIdx.x + 1] = 0;
#endif
}
"""


@pytest.mark.parametrize("threads", [1, 2])
def test_a_build_runs_its_blocks_on_its_own_thread_count(threads):
    # What the benchmark's builds differ in: one OS thread (the caller's) or an OpenMP team.
    build = sim_speed.Build("probe", None, threads)
    module = sim.Module(PROBE, name="where_probe.cu", opt=build.opt, threads=build.threads)
    out = np.zeros(2 * 16, np.int32)
    module.get_function("where")((16,), (1,), (out,))
    tids, team = out[0::2], out[1::2]
    if threads == 1:
        assert set(tids) == {threading.get_native_id()} and set(team) == {0}
    else:
        assert set(team) == {threads}
        one = np.zeros(2, np.int32)                # a one-block launch: no idle second thread
        module.get_function("where")((1,), (1,), (one,))
        assert one[1] == 1

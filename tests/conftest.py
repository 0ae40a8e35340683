"""Shared fixtures: devices, emulator thread orders, poisoned outputs, fresh random inputs, and
the kernel-coverage table printed at the end of every run.

Kernel tests take the `kernel_device` fixture: each runs under `sim` in the natural, reversed
and random thread orders, and on `cuda` (marked `cuda`; `pytest -m cuda` runs only those): on
the GPU where one is usable, else on tests/fake_cupy.py's stand-in for CuPy, so that the
library's cuda code paths run everywhere. Outputs that ops allocate are filled with NaN first,
so an element a kernel never writes fails the comparison; on sim, a kernel that writes outside
its arrays is a SimMemoryError (the emulator's memory check).

Random inputs are fresh for every test: the seed comes from CUPYCNN_TEST_SEED (a new one per
run when unset, printed in the report header so a failure can be replayed) and the test's id.
"""
import os
import secrets
import zlib
from collections import defaultdict

import numpy as np
import pytest

import cupycnn
from cupycnn import devices as dev
from cupycnn import runtime, sim
from cupycnn.sim.module import entry_points
from helpers import cuda_param

SIM_ORDERS = ("natural", "reversed", "random")


def pytest_configure(config):
    # Chosen once in the controller; xdist workers inherit it through the environment.
    os.environ.setdefault("CUPYCNN_TEST_SEED", str(secrets.randbelow(2**31)))
    # The emulator runs blocks on one OS thread in the tests: in the thread order each test
    # chooses, with all shared memory poisoned, and one build per kernel file (the multi-core
    # build is tested on its own in test_sim.py). Subprocesses inherit it.
    os.environ["CUPYCNN_SIM_THREADS"] = "1"
    sim.set_threads(None)                     # (read again, should anything have asked already)


def pytest_report_header(config):
    reason = dev._probe_cuda()
    gpu = "usable: cuda tests run on it" if not reason else \
        f"not usable ({reason}): cuda tests run on tests/fake_cupy.py's stand-in for CuPy"
    return [f"cupycnn: CUPYCNN_TEST_SEED={os.environ['CUPYCNN_TEST_SEED']}; GPU {gpu}"]


def _test_seed(nodeid):
    return (int(os.environ["CUPYCNN_TEST_SEED"]) * 1000003 + zlib.crc32(nodeid.encode())) % 2**32


@pytest.fixture
def rng(request):
    """A generator seeded from the run's seed and this test's id."""
    return np.random.default_rng(_test_seed(request.node.nodeid))


@pytest.fixture(autouse=True)
def _isolate_device_state(request):
    """Every test starts and ends with the same device, thread order, poison setting and memory
    check."""
    previous = dev._current
    order = sim.get_thread_order()
    sim_threads = sim.module._config.threads
    memory_check = sim.module._config.memory_check
    request.node._kernel_launches = set()
    runtime.record_launches(request.node._kernel_launches)
    yield
    runtime.record_launches(None)
    dev._current = previous
    sim.set_thread_order(*order)
    sim.set_threads(sim_threads)
    sim.set_memory_check(memory_check)
    dev.set_poison(False)


@pytest.fixture(autouse=True)
def _cuda_device_param(request, _isolate_device_state):
    """A test parametrised over `device` with helpers.DEVICES: its cuda case gets the GPU, or
    a fresh fake one (_use_cuda)."""
    callspec = getattr(request.node, "callspec", None)
    if callspec is not None and callspec.params.get("device") == "cuda":
        _use_cuda(request)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_makereport(item, call):
    """Attach the kernels a kernel test (one that takes `kernel_device` or `any_device` and
    compares with the reference) launched to its call report, which xdist sends to the
    controller, for the coverage table."""
    if call.when == "call" and {"kernel_device", "any_device"} & set(item.fixturenames):
        for source, kernel, where in sorted(getattr(item, "_kernel_launches", ())):
            item.user_properties.append(("kernel_launch", f"{source}|{kernel}|{where}"))


def _use_cuda(request):
    """Select the cuda device for the test of a cuda variant (helpers.cuda_param): the GPU
    where one is usable, else tests/fake_cupy.py's stand-in for CuPy (its API, streams, pool
    and graphs; the kernels run on the emulator), a fresh fake GPU for each test with a
    schedule from the test's seed, so that the library's cuda code paths run on every machine."""
    if not dev.cuda_available():
        import fake_cupy
        cupy, cupyx = fake_cupy.make(seed=_test_seed(request.node.nodeid))
        fake_cupy.install(request.getfixturevalue("monkeypatch"), cupy, cupyx)
    cupycnn.use("cuda")


def _kernel_device_params():
    params = [pytest.param(("sim", order), id=f"sim-{order}") for order in SIM_ORDERS]
    return params + [cuda_param(("cuda", None))]


@pytest.fixture(params=["sim", cuda_param("cuda")])
def step_device(request):
    """sim (its natural thread order), then cuda where usable: for the training step's tests
    (plan, recorded step, graphed trainer), a few seconds each on sim, whose point on cuda is
    that a real CUDA graph replays what the eager step computes. The test calls cupycnn.use."""
    if request.param == "cuda":
        _use_cuda(request)
    return request.param


@pytest.fixture(params=[cuda_param("cuda")])
def cuda_device(request):
    """The cuda device only: the GPU, or a fake one (see _use_cuda)."""
    _use_cuda(request)
    return "cuda"


@pytest.fixture(params=_kernel_device_params())
def kernel_device(request):
    """Run the test on a kernel device: sim in one thread order, or cuda. Outputs poisoned; on
    sim, every launch checked for writes outside its arrays (sim.set_memory_check)."""
    name, order = request.param
    _use_cuda(request) if name == "cuda" else cupycnn.use(name)
    if name == "sim":
        sim.set_thread_order(order, seed=_test_seed(request.node.nodeid))
    sim.set_memory_check(name != "numpy")      # sim's launches, and the fake GPU's
    dev.set_poison(True)
    return name


@pytest.fixture(params=[pytest.param(("numpy", None), id="numpy")] + _kernel_device_params())
def any_device(request):
    """numpy, then the kernel devices as the kernel_device fixture has them (sim in three thread
    orders, cuda where usable, sim's launches checked), outputs poisoned."""
    name, order = request.param
    _use_cuda(request) if name == "cuda" else cupycnn.use(name)
    if name == "sim":
        sim.set_thread_order(order, seed=_test_seed(request.node.nodeid))
    sim.set_memory_check(name != "numpy")      # sim's launches, and the fake GPU's
    dev.set_poison(name != "numpy")
    return name


@pytest.fixture
def numpy_device():
    cupycnn.use("numpy")
    return "numpy"


# ------------------------------------------------------------------ kernel coverage summary

def _all_kernels():
    def source(f):
        return (runtime.kernel_dir() / f"{f}.cu").read_text(encoding="utf-8")
    return [(f"{f}.cu", k) for f in runtime.kernel_files() for k, _ in entry_points(source(f))]


def _coverage_rows(stats):
    launches = defaultdict(set)          # (file, kernel) -> {"sim:natural", ...}
    compiled = defaultdict(set)          # file -> {"sm_80", ...}
    for report in stats.get("passed", []):
        if report.when != "call":
            continue
        for key, value in report.user_properties:
            if key == "kernel_launch":
                source, kernel, where = value.split("|")
                launches[(source, kernel)].add(where)
            elif key == "nvrtc_compiled":
                source, arch = value.split("|")
                compiled[source].add(arch)
    if not launches and not compiled:
        return []
    rows = []
    for source, kernel in _all_kernels():
        seen = launches.get((source, kernel), set())
        rows.append((f"{source}:{kernel}",
                     *("yes" if a in compiled.get(source, ()) else "-" for a in ("sm_80", "sm_90")),
                     *("yes" if f"sim:{o}" in seen else "-" for o in SIM_ORDERS),
                     "yes" if "cuda" in seen else "-"))
    return rows


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session, exitstatus):
    """A full run fails if any kernel lacks an NVRTC compile or a check in all three sim orders."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None or hasattr(session.config, "workerinput"):
        return
    rows = _coverage_rows(reporter.stats)
    session.config._cupycnn_coverage = rows
    config = session.config
    full_run = not config.option.keyword and not config.option.markexpr and \
        all(os.path.isdir(a) for a in config.args)
    missing = [r[0] for r in rows if "-" in r[1:6]]
    config._cupycnn_missing = missing if full_run else []
    if config._cupycnn_missing and exitstatus == 0:
        session.exitstatus = 1


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """The table: for every kernel, NVRTC compiles for sm_80/sm_90, kernel-vs-reference checks
    under each sim thread order, and on cuda."""
    rows = getattr(config, "_cupycnn_coverage", [])
    if not rows:
        return
    tr = terminalreporter
    tr.section("kernel coverage: NVRTC compiles and kernel-vs-reference checks")
    cols = ("kernel", "nvrtc sm_80", "nvrtc sm_90", "sim natural", "sim reversed", "sim random",
            "cuda" if dev.cuda_available() else "cuda (fake GPU)")
    widths = [max(len(str(r[i])) for r in rows + [cols]) for i in range(len(cols))]
    tr.write_line("  ".join(c.ljust(w) for c, w in zip(cols, widths)))
    for r in rows:
        tr.write_line("  ".join(str(c).ljust(w) for c, w in zip(r, widths)))
    if config._cupycnn_missing:
        tr.write_line("FAILED: kernels without an NVRTC compile or a check in all three sim "
                      "orders: " + ", ".join(config._cupycnn_missing), red=True)

"""docs/TUTORIAL.md runs as it stands, every command in order: info, a training run from a
TOML config, its pictures, evaluate, predict, Keras-style fit from Python on a PyTorch-style
model, a layer of one's own checked on sim, gradcheck, a 2-process run under mpiexec, bench."""
import re

import pytest

from doc_runner import ROOT, blocks, run_page

PAGE = ROOT / "docs" / "TUTORIAL.md"


@pytest.mark.slow                      # minutes: the page's trainings and builds
def test_every_command_of_the_tutorial_runs(tmp_path):
    done, skipped = run_page(PAGE, tmp_path, timeout=1500)
    out = done.stdout
    assert done.returncode == 0, out[-6000:]
    # The one block not run is the install, which is this test's own environment.
    assert [first for first, _ in skipped] == [
        'python3 -m venv .venv && .venv/bin/pip install -e ".[mpi]" && . .venv/bin/activate']
    assert "devices:" in out and "  sim    usable" in out
    tests = [float(a) for a in re.findall(r"^test: loss [0-9.]+, accuracy ([0-9.]+)%", out, re.M)]
    assert len(tests) == 2 and tests[0] >= 90.0, tests          # 3 epochs, then 1 on 2 ranks
    run = tmp_path / "repository" / "runs" / "tutorial"
    for name in ("last.h5", "log.csv", "summary.json", "curves.png", "confusion_matrix.png",
                 "predictions.png"):
        assert (run / name).is_file(), name
    evaluated = re.search(r"runs/tutorial/last.h5 on the digits test set: loss [0-9.]+, "
                          r"accuracy ([0-9.]+)% \(359 images, epoch 3\)", out)
    assert evaluated and float(evaluated.group(1)) == tests[0]   # what training measured
    label = re.search(r"digit.png is a (\d)", out).group(1)
    top = re.search(r"^digit.png\n  1\. ([0-9.]+)  (\d)\n  2\. [0-9.]+  \d\n  3\. ", out, re.M)
    assert top and top.group(2) == label, out[-3000:]
    assert "(conv): Conv2D(1, 16, kernel_size=(3, 3)" in out          # the PyTorch-style tree
    assert float(re.search(r"test accuracy ([0-9.]+)", out).group(1)) >= 0.9
    assert out.count("Softsign") >= 2 and "FAIL" not in out
    assert "2 rank(s) (mpi)" in out and "batch 32 (16 per rank)" in out
    assert re.search(r"bench: simple_cnn, batch 32 .* images/s", out)
    assert (tmp_path / "repository" / "runs" / "two-ranks" / "last.h5").is_file()


def test_the_install_is_the_readmes():
    """The tutorial's install is the README's, with the extra the two-process run needs."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    setup = next(line for line in readme.splitlines() if line.startswith("python3 -m venv"))
    install = next(text for language, text, skip in blocks(PAGE) if skip)
    assert setup.split(" && ")[0] == install.split(" && ")[0] == "python3 -m venv .venv"
    assert install.split(" && ")[1] == '.venv/bin/pip install -e ".[mpi]"'
    assert setup.split(" && ")[1].startswith(".venv/bin/pip install -e ")

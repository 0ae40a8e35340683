"""docs/WRITING_A_LAYER.md runs as it stands: its Swish layer, kernel, reference, op and checks,
outside the tree (runtime.load_module, the gradient-check command's --cases) and inside it
(kernels/, reference/, ops/, layers/, the suite's case and a kernel test), in a copy of the
repository."""
import pytest

from doc_runner import ROOT, blocks, run_page

PAGE = ROOT / "docs" / "WRITING_A_LAYER.md"


@pytest.mark.slow                      # minutes: the page's builds and checks
def test_every_block_of_the_page_runs(tmp_path):
    done, skipped = run_page(PAGE, tmp_path, timeout=900)
    assert done.returncode == 0, done.stdout[-6000:]
    assert skipped == []
    out = done.stdout
    assert "kernels match the reference in every thread order" in out
    assert out.count("1 of 1 cases passed") == 2                 # outside and inside the tree
    assert "Swish  input" in out
    assert "16 passed" in out       # the kernel test: 4 shapes x (3 sim thread orders + cuda)
    made = tmp_path / "repository"
    for path in ("kernels/swish.cu", "cupycnn/ops/swish.py", "cupycnn/layers/swish.py",
                 "my_layer/swish.py"):
        assert (made / path).is_file(), path
    assert not (ROOT / "kernels" / "swish.cu").exists()          # the real tree untouched


def test_the_page_shows_each_piece():
    languages = [language for language, _, _ in blocks(PAGE)]
    assert languages.count("cuda") == 1 and languages.count("bash") >= 4
    text = PAGE.read_text(encoding="utf-8")
    for needed in ("runtime.load_module", "--cases", "@case(\"Swish\")", "get_kernel",
                   "kernel_device", "cupycnn.gradcheck("):
        assert needed in text, needed

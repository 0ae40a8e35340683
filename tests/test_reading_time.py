"""benchmarks/reading_time.py: what it counts in a file's lines, and the reading path of
docs/layers/conv.md is its output for the files as they are (regenerate: python
benchmarks/reading_time.py --update-docs), so the path's line numbers name the lines they say."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import docblock  # noqa: E402
import reading_time  # noqa: E402


def test_cuda_lines_words_and_lines_read_before():
    seen = set()
    first = ["// two words", "int a = 0;   // three more words", "", "}", "#pragma unroll"]
    assert reading_time.count(first, "cuda", seen) == (3, 0, 5)
    again = ["  int   a = 0;", "}", "int b = 1;"]      # white space folded: read before
    assert reading_time.count(again, "cuda", seen) == (1, 2, 0)


def test_python_docstrings_and_comments_are_words():
    lines = ['"""One two', "three.", '"""', "x = 1  # four five", "# six", 'y = """not"""']
    code, again, words = reading_time.count(lines, "python", set())
    assert (code, again) == (2, 0)           # x = 1, and y = a string: code
    assert words == 3 + 2 + 1                # the docstring's, the two comments'


def test_markdown_is_words_only():
    assert reading_time.count(["| a | b c |", "", "some prose here"], "markdown", set()) == \
        (0, 0, 6)


def test_a_missing_anchor_says_which():
    with pytest.raises(SystemExit, match="no line starts with 'no such line'"):
        reading_time.part("kernels/conv2d.cu", "no such line", None)


def test_a_skipped_block_is_left_out():
    begin, end, lines, skipped = reading_time.part(
        "kernels/conv2d.cu", "forward", "input gradient", [("extern", "}")])
    ((a, b),) = skipped
    assert begin < a < b <= end and len(lines) == end - begin + 1 - (b - a + 1)
    assert lines[0].lstrip("/ -") == "forward"


def test_section_rules_are_anchors():
    begin, end, lines, _ = reading_time.part("kernels/conv2d.cu", "forward", "input gradient")
    assert lines[0].lstrip("/ -") == "forward" and "input gradient" not in lines[-1]
    assert any(line.startswith("conv2d_forward(") for line in lines)


def test_the_docs_hold_the_generated_reading_path():
    for name, text in reading_time.tables().items():
        name = f"reading_time.py: {name}"
        block = docblock.read_block(name, reading_time.DOC)
        assert block is not None, f"docs/layers/conv.md lost its '{name}' block markers"
        assert block == text.strip(), (
            "docs/layers/conv.md's reading path is not the script's output for the files as they "
            "are (a line moved?): run python benchmarks/reading_time.py --update-docs")

"""How long the convolution's reading path (docs/layers/conv.md) takes a learner who knows CUDA
basics: an estimate by counting, not a stopwatch.

    python benchmarks/reading_time.py                 # the table
    python benchmarks/reading_time.py --update-docs   # the same, written into docs/layers/conv.md

Each step of PATH is a part of one file: from the line that starts with `first` (or the section
rule `// ---- first`) up to the one of `until` (not read; None: the end of the file), found in
the file as it is now,
so the line numbers printed never drift from the text. Counted in a part: its code lines (not
blank, not only a comment), split into new ones and ones read before (the same line, white space
folded, earlier on the path: `__syncthreads();`, a loop header the forward kernel had), and the
words of its comments and docstrings. Its minutes:

    new CUDA lines / 6 + new Python lines / 12 + lines read before / 30 + words / 150 + stalls

6, 12 and 150 are the pace the previous estimate of this path assumed (kept, so that the
figures compare); a line read before is recognised, not studied, at 30 a minute; a stall is a
few minutes for a place where a reader stops to work something out, each one named. The pace
and the stalls are one reader's judgement (the session that wrote this path, reading its final
text as a learner would), not a timed learner; the rest is counting.
"""
import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))

import docblock  # noqa: E402

DOC = ROOT / "docs" / "layers" / "conv.md"
PACE = {"cuda": 6, "python": 12, "again": 30, "words": 150}   # lines or words a minute

# (file, first, until, what to read for, [(stall minutes, where)][, [(skip first, last)]])
PATH = [
    ("docs/layers/conv.md", "## Reading path", "### After the sitting",
     "this path: what to read, what to skip", []),
    ("cupycnn/reference/conv2d.py", '"""2-D convolution', "# ----",
     "the docstring's sums (forward and the three gradients), then how NumPy computes them",
     [(1, "the window view (sliding_window_view, then every sh-th window) and tensordot's "
          "axes, against the sums"),
      (1, "the input gradient's strided add: its slice bounds")]),
    ("kernels/conv2d.cu", "// conv2d.cu --", "// Launch constants",
     "each sum as an M x P matrix product over K, and why implicit GEMM",
     [(2, "the table's three products matched against the reference's sums")]),
    ("kernels/conv2d_coords.cuh", "// conv2d_coords.cuh", "the definitions",
     "what a row or column index stands for (Tap, PhaseTap, Pixel), what split3, advance3 and "
     "phase_axis do", []),
    ("kernels/conv2d.cu", "// Launch constants", "the register tile",
     "the launch constants: the tile's sizes and how the threads share its loads", []),
    ("kernels/conv2d.cu", "forward", 'extern "C"',
     "conv2d_forward's body: the gather of im2col(x) into the tiles, the epilogue",
     [(2, "which thread loads which element: a_k, a_m, b_p, b_k and the strides 16 and 4")]),
    ("kernels/conv2d.cu", "input gradient", "weight gradient",
     "the stride phases (worked example, derivation), then conv2d_backward_input",
     [(4, "the derivation of taps_h, first_h, base_i checked against the example")]),
    ("kernels/conv2d.cu", "weight gradient", "the forward with the batchnorm statistics",
     "why the weight gradient is split, conv2d_backward_weight, the fixed-order reduce",
     [(1, "the roles turned: k runs over output pixels, B's columns are taps")]),
]


def language(path):
    if path.endswith(".md"):
        return "markdown"
    return "cuda" if path.endswith((".cu", ".cuh")) else "python"

# After the sitting, in this order (counted as if read after PATH): the machinery it skips, and
# the launches.
LATER = [
    ("kernels/conv2d_coords.cuh", "the definitions", None,
     "the definitions of split3, advance3 and phase_axis",
     [(1, "why advance3 needs one carry per coordinate")]),
    ("kernels/conv2d.cu", "the register tile", "batchnorm statistics",
     "the register tile: the tiles' layout, accumulate_tile", []),
    ("kernels/conv2d.cu", 'extern "C"', "input gradient",
     "conv2d_forward, the entry point: one call of the body", []),
    ("kernels/conv2d.cu", "batchnorm statistics", "forward",
     "the epilogue of the forward's variant with the batchnorm's statistics", []),
    ("kernels/conv2d.cu", "the forward with the batchnorm statistics", None,
     "conv2d_forward_stats, that variant's entry point", []),
    ("cupycnn/ops/conv2d.py", "kernels/conv2d.cu", "the public ops",
     "the launches: the grids and the weight gradient's split count",
     [(1, "weight_grad_splits's arithmetic")]),
]


def _matches(line, anchor):
    """The line starts with `anchor`, or is a section rule (// ---- anchor, # ---- anchor)."""
    label = line.strip().lstrip("/#").strip()
    return line.startswith(anchor) or (label.startswith("---") and
                                       label.lstrip("-").strip() == anchor)


def part(path, first, until, skips=()):
    """(first line, last line, the lines read, the (first, last) of each skipped block), 1-based,
    of the step's part of `path`; a skip (first, last) leaves out the lines from the one that
    starts with `first` to the next that starts with `last`, both included."""
    lines = (ROOT / path).read_text(encoding="utf-8").splitlines()
    starts = [i for i, line in enumerate(lines) if _matches(line, first)]
    if not starts:
        raise SystemExit(f"{path}: no line starts with {first!r}: update PATH")
    begin = starts[0]
    end = len(lines)
    if until is not None:
        ends = [i for i, line in enumerate(lines) if i > begin and _matches(line, until)]
        if not ends:
            raise SystemExit(f"{path}: no line after {begin + 1} starts with {until!r}: "
                             f"update PATH")
        end = ends[0]
    while end > begin and not lines[end - 1].strip():
        end -= 1
    keep, skipped = list(range(begin, end)), []
    for skip_first, skip_last in skips:
        a = next((i for i in keep if lines[i].startswith(skip_first)), None)
        b = next((i for i in keep if a is not None and i > a and
                  lines[i].startswith(skip_last)), None)
        if b is None:
            raise SystemExit(f"{path}: no block from {skip_first!r} to {skip_last!r} in lines "
                             f"{begin + 1}-{end}: update PATH")
        keep = [i for i in keep if not a <= i <= b]
        skipped.append((a + 1, b + 1))
    return begin + 1, end, [lines[i] for i in keep], skipped


def count(lines, lang, seen):
    """(new code lines, code lines already read, words of comments and docstrings); `seen`,
    the code lines read so far (white space folded), grows by these."""
    code = again = words = 0
    comment = "//" if lang == "cuda" else "#"
    in_doc = False
    for line in lines:
        text = line.strip()
        if lang == "markdown":                  # prose, tables included
            words += len(text.replace("|", " ").split())
            continue
        if lang == "python" and (in_doc or text.startswith(('"""', 'r"""'))):
            quotes = text.count('"""')
            words += len(text.replace('"""', " ").split())
            if in_doc:
                in_doc = quotes == 0
            else:
                in_doc = quotes == 1
            continue
        if not text:
            continue
        if text.startswith(comment):
            words += len(text[len(comment):].split())
            continue
        if comment in text:                     # a trailing comment (a rough split)
            text, trailing = text.split(comment, 1)
            words += len(trailing.split())
        folded = " ".join(text.split())
        if folded in seen:
            again += 1
        else:
            code += 1
            seen.add(folded)
    return code, again, words


def estimate(steps=None, seen=None):
    """[(step, file, (first, last), new code lines, lines read before, words, stall minutes,
    minutes, what, stalls)] for `steps` (PATH), in its order; `seen`: the code lines read
    before them."""
    rows, seen = [], set() if seen is None else seen
    for k, (path, first, until, what, stalls, *skips) in enumerate(PATH if steps is None
                                                                   else steps, 1):
        begin, end, lines, skipped = part(path, first, until, *skips)
        lang = language(path)
        code, again, words = count(lines, lang, seen)
        stall = sum(m for m, _ in stalls)
        pace = PACE.get(lang, 1)                # markdown has no code lines
        minutes = code / pace + again / PACE["again"] + words / PACE["words"] + stall
        rows.append((k, path, (begin, end, skipped), code, again, words, stall, minutes, what,
                     stalls))
    return rows


def path_table(rows, label="step"):
    """The learner's table: what to read, in order, and the minutes; then where to slow down."""
    out = [f"| {label} | file, lines | read for | minutes |", "| --- | --- | --- | --- |"]
    for k, path, (begin, end, skipped), *_, minutes, what, _ in rows:
        lines = f"{begin}-{end}" + "".join(f" but {a}-{b}" for a, b in skipped)
        out.append(f"| {k} | `{path}` {lines} | {what} | {minutes:.0f} |")
    out.append(f"| | | total | {sum(r[7] for r in rows):.0f} |")
    stalls = [(k, m, where) for k, *_, row_stalls in rows for m, where in row_stalls]
    if stalls:
        out += ["", "Slow down at (the stalls counted in the minutes):"]
        out += [f"- {label} {k}, {m} min: {where}" for k, m, where in stalls]
    return "\n".join(out)


def counts_table(rows):
    """What each step's minutes are made of."""
    out = ["| step | new code lines | lines read before | words | stalls (min) | minutes |",
           "| --- | --- | --- | --- | --- | --- |"]
    for k, path, _, code, again, words, stall, minutes, *_ in rows:
        lang = "CUDA" if language(path) == "cuda" else "Python" if code else "-"
        out.append(f"| {k} | {code} ({lang}) | {again} | {words} | {stall} | {minutes:.1f} |")
    sums = [sum(r[i] for r in rows) for i in (3, 4, 5, 6, 7)]
    out.append(f"| total | {sums[0]} | {sums[1]} | {sums[2]} | {sums[3]} | {sums[4]:.1f} |")
    return "\n".join(out)


def tables():
    """{block name: its text}: the path, what comes after it, and what the path's minutes are
    made of."""
    seen = set()
    rows = estimate(PATH, seen)
    later = estimate(LATER, seen)
    return {"path": path_table(rows), "later": path_table(later, "after"),
            "counts": counts_table(rows)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--update-docs", action="store_true",
                   help=f"write the table into {DOC.relative_to(ROOT)} between its markers")
    args = p.parse_args(argv)
    for _ in range(2 if args.update_docs else 1):   # twice: the doc's own step counts the table
        blocks = tables()
        if args.update_docs:
            for name, text in blocks.items():
                docblock.update_block(f"reading_time.py: {name}", text, DOC)
    print("\n\n".join(blocks.values()))


if __name__ == "__main__":
    main()

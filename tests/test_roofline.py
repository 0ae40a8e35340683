"""benchmarks/roofline.py: the convolutions are read off the model, the floors are the larger of
the two terms, measured ceilings replace the labelled defaults, and the roofline section of
docs/BENCHMARKS.md is the script's output (regenerate: python benchmarks/roofline.py
--update-docs)."""
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import docblock  # noqa: E402
import roofline  # noqa: E402


@pytest.fixture(scope="module")
def convs():
    return roofline.resnet18_convolutions(256)


def test_resnet18_cifar_has_twenty_convolutions_in_forward_order(convs):
    assert len(convs) == 20
    stem = convs[0]
    assert (stem.name, stem.c, stem.o, stem.h, stem.kh, stem.stride, stem.ho) == (
        "conv1", 3, 64, 32, 3, (1, 1), 32)
    shortcuts = [c for c in convs if c.kh == 1]
    assert [c.name for c in shortcuts] == [f"layer{i}.0.downsample.0" for i in (2, 3, 4)]
    assert (convs[-1].c, convs[-1].o, convs[-1].h, convs[-1].ho) == (512, 512, 4, 4)
    assert [count for _, count in roofline.distinct(convs)] == [1, 4, 1, 3, 1, 1, 3, 1, 1, 3, 1]


def test_flops_bytes_and_the_floor(convs):
    c = convs[1]                                              # layer1.0.conv1: 64->64 at 32x32
    assert c.flops() == 2 * 256 * 64 * 32 * 32 * 64 * 9
    x, w = 256 * 64 * 32 * 32, 64 * 64 * 9
    for product in roofline.PRODUCTS:                         # the same three tensors' sizes
        assert c.bytes(product, 4) == 4 * (2 * x + w) and c.bytes(product, 2) == 2 * (2 * x + w)
    bw, tf32 = roofline.CEILINGS["memory"].value, roofline.CEILINGS["tf32"].value
    assert c.floor("forward", "tf32") == (c.flops() / tf32, "compute")
    assert c.floor("forward", "bf16", itemsize=4) == (4 * (2 * x + w) / bw, "memory")
    assert convs[0].floor("weight grad", "fp32")[1] == "memory"      # the stem: 13 FLOP/B


def test_measured_ceilings_replace_the_defaults_with_their_source(tmp_path):
    session = {"date": "2027-01-01 00:00:00 UTC", "figures": {
        "ceilings.device": {"value": "NVIDIA H200", "unit": ""},
        "ceilings.copy bandwidth": {"value": 4.5, "unit": "TB/s"},
        "ceilings.matmul bf16": {"value": 800.0, "unit": "TFLOP/s"}}}
    path = tmp_path / "figures.json"
    path.write_text(json.dumps(session), encoding="utf-8")
    ceilings = roofline.measured_ceilings(path)
    assert ceilings["memory"].value == 4.5e12 and ceilings["bf16"].value == 800e12
    assert "gpu_ceilings.py" in ceilings["memory"].source
    assert "NVIDIA H200" in ceilings["bf16"].source
    assert ceilings["tf32"] == roofline.CEILINGS["tf32"]                # not measured: as it was
    path.write_text(json.dumps({"copy bandwidth": {"value": 0.0, "unit": "TB/s"}}))
    with pytest.raises(SystemExit, match="not a positive figure"):
        roofline.measured_ceilings(path)


def test_the_docs_hold_the_generated_roofline():
    block = docblock.read_block("roofline.py")
    assert block is not None, "docs/BENCHMARKS.md lost its roofline block markers"
    assert block == roofline.markdown().strip(), (
        "docs/BENCHMARKS.md's roofline is not the script's output: run "
        "python benchmarks/roofline.py --update-docs")

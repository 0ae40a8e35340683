"""examples/train_imagenet.py: the recipe (SGD momentum 0.9, lr 0.1 per 256, warm-up then
cosine, weight decay off batchnorm and biases, label smoothing 0.1) and the whole script end to
end under mpiexec on a tiny ImageNet-layout folder of real photos, each rank on its own shards,
with a benchmark run of the synthetic shards."""
import csv
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cupycnn.data import ImageNet, TarShards, make_shards
from test_data_folder import photo

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "examples" / "train_imagenet.py"
MPIEXEC = Path(sys.executable).parent / "mpiexec"
WNIDS = ["n01440764", "n01443537", "n01484850"]
PHOTOS = ["china.jpg", "flower.jpg", "rocket.jpg", "chelsea.png", "coffee.png", "camera.png"]


def _script():
    spec = importlib.util.spec_from_file_location("train_imagenet", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_imagenet(tmp_path_factory):
    """train/<wnid>/ with 4 photos each (shrunk to 96 x 64 JPEGs), val/ flat with Kaggle's
    LOC_val_solution.csv."""
    root = tmp_path_factory.mktemp("imagenet")
    rows = []
    for k, wnid in enumerate(WNIDS):
        (root / "train" / wnid).mkdir(parents=True)
        for j in range(4):
            with Image.open(photo(PHOTOS[(k + j) % len(PHOTOS)])) as image:
                image = image.convert("RGB").resize((96, 64)).rotate(90 * j)
                image.save(root / "train" / wnid / f"{wnid}_{j}.JPEG", quality=90)
        (root / "val").mkdir(exist_ok=True)
        for j in range(2):
            stem = f"ILSVRC2012_val_{2 * k + j + 1:08d}"
            with Image.open(photo(PHOTOS[k])) as image:
                image.convert("RGB").resize((80, 60)).save(root / "val" / f"{stem}.JPEG")
            rows.append(f"{stem},{wnid} 1 2 30 40\n")
    (root / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n" + "".join(rows))
    return root


def test_the_recipe():
    from cupycnn import models
    from cupycnn.cli import build_optimizer, build_schedule
    from cupycnn.layers import BatchNorm2D, Conv2D, Dense
    module = _script()
    args = module.build_parser().parse_args(["--batch-size", "512", "--epochs", "10",
                                             "--warmup-epochs", "2"])
    settings = module.recipe(args, None)
    assert (settings.lr, settings.momentum, settings.nesterov) == (0.2, 0.9, False)
    assert args.label_smoothing == 0.1 and args.weight_decay == 1e-4 and args.model == "resnet50"
    model = models.resnet50(num_classes=10)
    optimizer = build_optimizer(model, settings)
    decayed, free = optimizer.param_groups
    assert decayed["weight_decay"] == 1e-4 and free["weight_decay"] == 0.0
    assert all(isinstance(p.layer, (Conv2D, Dense)) and p.key == "weight"
               for p in decayed["params"])
    assert any(isinstance(p.layer, BatchNorm2D) for p in free["params"])
    assert any(p.key == "bias" for p in free["params"])
    assert len(decayed["params"]) + len(free["params"]) == len(list(model.named_parameters()))
    schedule, interval = build_schedule(optimizer, settings, steps_per_epoch=100)
    assert interval == "step"
    lrs = []
    for _ in range(1000):
        lrs.append(optimizer.param_groups[0]["lr"])
        schedule.step()
    assert lrs[0] == pytest.approx(0.2 / 3)                         # warm-up from a third
    assert lrs[200] == pytest.approx(0.2)                           # peak after 2 epochs
    assert lrs[600] == pytest.approx(0.1, rel=1e-6)                 # cosine: half way down
    assert lrs[-1] < 1e-5 and all(a >= b for a, b in zip(lrs[200:], lrs[201:]))


def test_the_options_shared_with_the_training_command():
    """--epochs, --batch-size, --momentum, --label-smoothing, --warmup-epochs, --checkpoint and
    --resume are the training command's (cli.training_options): its flags and help, this
    recipe's defaults."""
    from cupycnn import cli
    args = _script().build_parser().parse_args([])
    assert (args.epochs, args.batch_size, args.momentum, args.label_smoothing,
            args.warmup_epochs, args.checkpoint, args.resume) == (90, 1024, 0.9, 0.1, 5.0, None,
                                                                  False)
    training = {a.dest: a.help for a in cli.build_parser("", default_dataset=None)._actions}
    here = {a.dest: a.help for a in _script().build_parser()._actions}
    assert all(here[dest] == training[dest] for dest in ("epochs", "batch_size", "momentum",
                                                         "checkpoint", "resume"))


def test_end_to_end_data_parallel_on_per_rank_shards(tiny_imagenet, tmp_path):
    shards = tmp_path / "shards"
    make_shards(tiny_imagenet / "train", shards, shard_size=3)        # 4 shards of 3
    assert len(TarShards(shards)) == 12
    assert ImageNet(tiny_imagenet, "val").labels.tolist() == [0, 0, 1, 1, 2, 2]
    log = tmp_path / "run"
    command = [str(MPIEXEC), "-n", "2", sys.executable, str(SCRIPT), "--train", str(shards),
               "--val", str(tiny_imagenet), "--epochs", "1", "--batch-size", "4",
               "--image-size", "64", "--workers", "1", "--warmup-epochs", "1", "--lr", "0.01",
               "--device", "numpy", "--no-progress", "--log-dir", str(log)]
    out = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "resnet50 (23,514,179 parameters)" in out.stdout
    assert "2 rank(s), batch 4 (2 per rank), 1 decoding workers per rank" in out.stdout
    assert "3 steps per epoch" in out.stdout          # 6 samples per rank, 2 per step
    assert "val: loss" in out.stdout and "(6 images)" in out.stdout      # both ranks' shares
    rows = list(csv.DictReader(open(log / "log.csv")))
    assert [int(r["epoch"]) for r in rows] == [1]
    assert all(np.isfinite(float(r["loss"])) for r in rows)
    assert (log / "last.h5").is_file() and (log / "best.h5").is_file()


def test_benchmark_on_synthetic_shards(tmp_path):
    command = [sys.executable, str(SCRIPT), "--synthetic", "12", "--synthetic-dir",
               str(tmp_path / "syn"), "--benchmark", "--benchmark-steps", "2", "--batch-size",
               "2", "--image-size", "32", "--workers", "2", "--model", "resnet18",
               "--device", "numpy", "--epochs", "1", "--no-progress", "--log-dir",
               str(tmp_path / "run"), "--json", str(tmp_path / "figures.json")]
    out = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    for row in ("input pipeline alone", "model step alone", "pipeline + step (training)"):
        line = next(l for l in out.stdout.splitlines() if row in l)
        assert float(line.split("|")[2]) > 0
    figures = json.loads((tmp_path / "figures.json").read_text(encoding="utf-8"))
    assert figures["model step alone, images/s per rank"]["value"] > 0
    assert figures["pipeline / step"] > 0
    ds = TarShards(tmp_path / "syn" / "n12")
    assert len(ds) == 12 and len(ds.classes) == 1000
    data, label, _ = next(ds.samples())
    assert data[:3] == b"\xff\xd8\xff" and label == 0

"""The `cupycnn` command: subcommands, TOML configs under the flags, evaluate, bench, and
`cupycnn info` saying why each unusable piece is unusable."""
import builtins
import os
import re
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
import pytest

import cupycnn
from cupycnn import cli, command, machine
from cupycnn.data import Digits, Loader, Normalize, channel_stats
from cupycnn.models import simple_cnn
from cupycnn.optim import Adam
from cupycnn.train import Trainer
from test_readme_help import unexplained_options

ROOT = Path(__file__).resolve().parent.parent


def test_the_console_script_is_declared():
    assert 'cupycnn = cupycnn.command:main' in (ROOT / "setup.py").read_text(encoding="utf-8")
    scripts = {e.name: e.value for e in metadata.entry_points(group="console_scripts")}
    if "cupycnn" not in scripts:
        pytest.skip("this environment was installed before the console script existed "
                    "(pip install -e . again); CI installs afresh")
    assert scripts["cupycnn"] == "cupycnn.command:main"


def test_usage_and_unknown_commands(capsys):
    assert command.main([]) == 2
    assert "train      train a model" in capsys.readouterr().err
    with pytest.raises(SystemExit) as done:
        command.main(["fly"])
    assert done.value.code == 2 and "invalid choice: 'fly'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        command.main(["--version"])
    assert capsys.readouterr().out.strip() == f"cupycnn {cupycnn.__version__}"


def test_a_config_file_under_the_flags(tmp_path):
    config = tmp_path / "run.toml"
    config.write_text('dataset = "digits"\nepochs = 4\nlr = 0.01\naugment = true\n'
                      'skip_bad_images = true\nlog-dir = "elsewhere"\n', encoding="utf-8")
    parser = cli.build_parser("test")
    args = cli.parse_args(parser, ["--config", str(config), "--epochs", "2"])
    assert (args.dataset, args.epochs, args.lr, args.augment) == ("digits", 2, 0.01, True)
    assert args.skip_bad_images and args.log_dir == "elsewhere"
    assert args.batch_size == 32                       # the digits recipe fills the rest
    args = cli.parse_args(parser, ["--config", str(config), "--no-augment"])
    assert args.epochs == 4 and args.augment is False


@pytest.mark.parametrize("text, message", [
    ("epoch = 3\n", "'epoch' is not an option of this command; options: augment, "),
    ("augment = 1\n", "augment must be true or false, got 1"),
    ("epochs = \"many\"\n", "argument --epochs: invalid int value: 'many'"),
    ("epochs = [\n", "not a TOML file"),
])
def test_config_problems_are_one_line(tmp_path, capsys, text, message):
    config = tmp_path / "bad.toml"
    config.write_text(text, encoding="utf-8")
    with pytest.raises(SystemExit):
        cli.parse_args(cli.build_parser("test"), ["--config", str(config)])
    assert message in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.parse_args(cli.build_parser("test"), ["--config", str(tmp_path / "none.toml")])
    assert "--config: no file at" in capsys.readouterr().err


def test_help_explains_every_option_with_its_real_default():
    text = cli.build_parser("test").format_help()
    parser = cli.build_parser("test")
    for action in parser._actions:
        assert action.help, action.dest                # every option explained
    assert "(default: None)" not in text
    flat = " ".join(text.split())
    assert "(default: cifar10: 40, digits: 15, synthetic: 5, folder: 30)" in flat
    assert "(default: cifar10: 0.1, digits: 0, synthetic: 0.1, folder: 0.15)" in flat
    assert "--blas-threads N" in text and "digits: 1" in flat


@pytest.mark.parametrize("script, needle", [("train_folder.py", "Kaggle layout"),
                                             ("train_cifar.py", "mpirun -n 4"),
                                             ("grid_search.py", "Everything after `--`"),
                                             ("train_imagenet.py", "Goyal et al. 2017"),
                                             ("predict.py", "docs/predict.md")])
def test_example_scripts_help_in_full(script, needle):
    """The whole description (paragraphs and examples), every option explained, no default
    shown as None."""
    out = subprocess.run([sys.executable, str(ROOT / "examples" / script), "--help"],
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "COLUMNS": "100"})
    assert out.returncode == 0, out.stderr
    assert needle in out.stdout
    assert "(default: None)" not in out.stdout and "(default: False)" not in out.stdout
    assert unexplained_options(out.stdout) == []


@pytest.fixture(scope="module")
def digits_checkpoint(tmp_path_factory):
    cupycnn.use("numpy")
    cupycnn.manual_seed(0)
    train, test = Digits(train=True), Digits(train=False)
    mean, std = channel_stats(train)
    model = simple_cnn(num_classes=10, in_channels=1, input_size=8, widths=(8, 16),
                       block_dropout=(0.0, 0.0), hidden=32)
    trainer = Trainer(model, Adam(model.parameters(), lr=3e-3), progress=False,
                      config={"dataset": "digits"}, classes=train.classes,
                      normalization={"mean": mean, "std": std})
    trainer.fit(Loader(train, 64, shuffle=True, transform=Normalize(mean, std)), epochs=1)
    path = tmp_path_factory.mktemp("ckpt") / "digits.h5"
    trainer.save_checkpoint(path)
    expected = trainer.evaluate(Loader(test, 100, transform=Normalize(mean, std)))
    return path, expected


def test_evaluate_a_checkpoint_on_its_dataset(digits_checkpoint, capsys):
    path, expected = digits_checkpoint
    assert command.main(["evaluate", "--checkpoint", str(path), "--device", "numpy"]) == 0
    out = capsys.readouterr().out
    shown = re.search(r"on the digits test set: loss ([0-9.]+), accuracy ([0-9.]+)% "
                      r"\(359 images, epoch 1\)", out)
    assert shown, out
    assert float(shown.group(2)) == pytest.approx(100 * expected["accuracy"], abs=0.005)
    assert float(shown.group(1)) == pytest.approx(expected["loss"], abs=5e-5)


def test_evaluate_refuses_a_dataset_of_other_classes(digits_checkpoint, capsys):
    path, _ = digits_checkpoint
    code = command.main(["evaluate", "--checkpoint", str(path), "--dataset", "synthetic",
                         "--synthetic-size", "20", "--device", "numpy"])
    assert code == 2
    assert "the checkpoint's classes (10: 0, 1, 2, 3, 4...) are not the dataset's" in \
        capsys.readouterr().err


def test_bench_reports_throughput_and_the_machines_load(capsys):
    assert command.main(["bench", "--dataset", "digits", "--device", "numpy", "--steps", "2",
                         "--warmup", "0", "--batch-size", "16", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"bench: simple_cnn, batch 16 \(1 rank\(s\)\), adam, device numpy: 2 steps, "
                     r"median [0-9.]+ ms \(quartiles .*\), [0-9.]+ images/s", out), out
    assert "machine: load average" in out


def test_gradcheck_and_predict_through_the_command(capsys, tmp_path):
    assert command.main(["gradcheck", "--layer", "ReLU"]) == 0
    assert "cases passed" in capsys.readouterr().out
    assert command.main(["predict", str(tmp_path / "none.png"), "--checkpoint",
                         str(tmp_path / "none.h5"), "--device", "numpy"]) == 1
    assert capsys.readouterr().err.startswith("cupycnn predict: error: no checkpoint at")


def test_info_says_what_is_usable_and_why_not(monkeypatch):
    lines = machine.report()
    text = "\n".join(lines)
    assert text.startswith(f"cupycnn {cupycnn.__version__}")
    assert "  numpy  usable" in text and re.search(r"  cuda   (usable|unusable: .+)", text)
    assert re.search(r"^(NCCL|MPI|NVRTC): ", text, re.M)
    # Each missing piece, one at a time.
    monkeypatch.setattr(machine.shutil, "which", lambda *a, **k: None)
    assert "sim    unusable: no g++ on the PATH" in "\n".join(machine.report())
    monkeypatch.undo()
    real_import = builtins.__import__

    def without_mpi(name, *args, **kwargs):
        if name.startswith("mpi4py"):
            raise ImportError("No module named 'mpi4py'")
        return real_import(name, *args, **kwargs)
    monkeypatch.setattr(builtins, "__import__", without_mpi)
    assert "MPI: unusable: mpi4py is not installed" in "\n".join(machine.report())
    monkeypatch.undo()
    monkeypatch.setattr(cupycnn.devices, "_cuda_reason", "the CUDA driver reports no GPU")
    text = "\n".join(machine.report())
    assert "cuda   unusable: the CUDA driver reports no GPU" in text
    assert "NCCL: unusable: needs a usable GPU" in text and "GPU: none usable" in text


def test_info_on_a_gpu_lists_each_gpu(monkeypatch):
    """The GPU lines, from CuPy's runtime (here a stand-in with an H200's properties)."""
    import types
    runtime = types.SimpleNamespace(
        driverGetVersion=lambda: 13000, runtimeGetVersion=lambda: 12080,
        getDeviceCount=lambda: 2,
        getDeviceProperties=lambda i: {"name": b"NVIDIA H200", "totalGlobalMem": 143 * 2**30,
                                       "major": 9, "minor": 0, "multiProcessorCount": 132})
    monkeypatch.setitem(sys.modules, "cupy", types.SimpleNamespace(
        cuda=types.SimpleNamespace(runtime=runtime)))
    assert machine.gpu_lines() == [
        "CUDA driver 13.0, runtime 12.8",
        "GPU 0: NVIDIA H200, 143.0 GiB, compute capability 9.0, 132 SMs",
        "GPU 1: NVIDIA H200, 143.0 GiB, compute capability 9.0, 132 SMs"]


# ------------------------------------------------------------------------------- data

def _numbered_folder(root, classes=("cat", "dog", "owl"), per_class=3):
    """root/<class>/<n>.png, 6 x 5 PNGs whose first pixel spells their number n (lossless, so
    the shards' bytes decode to exactly these pixels)."""
    from PIL import Image
    pixels, n = {}, 0
    for label, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for _ in range(per_class):
            image = np.full((5, 6, 3), 40 * label, np.uint8)
            image[0, 0] = (n, 255 - n, label)
            Image.fromarray(image).save(root / name / f"{n:02d}.png")
            pixels[n] = (image, label)
            n += 1
    return pixels


def _read_back(out):
    """Every sample of the shards under out: (number, decoded pixels, label), in file order."""
    import io

    from PIL import Image

    from cupycnn.data import TarShards
    shards = TarShards(out)
    rows = []
    for data, label, _ in shards.samples():
        image = np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))
        rows.append((int(image[0, 0, 0]), image, int(label)))
    return shards, rows


def test_data_make_shards_through_the_command(tmp_path, capsys):
    """`cupycnn data make-shards FOLDER OUT` writes shards that read back as the folder: every
    image once, its pixels and its class; shuffled by the seed, or in the folder's order."""
    pixels = _numbered_folder(tmp_path / "animals")
    out = tmp_path / "shards"
    assert command.main(["data", "make-shards", str(tmp_path / "animals"), str(out),
                         "--shard-size", "4", "--seed", "1"]) == 0
    assert "wrote 3 shards and index.json to" in capsys.readouterr().out
    shards, rows = _read_back(out)
    assert shards.classes == ["cat", "dog", "owl"] and shards.counts.tolist() == [4, 4, 1]
    numbers = [n for n, _, _ in rows]
    assert sorted(numbers) == list(range(9)) and numbers != list(range(9))      # shuffled
    for n, image, label in rows:
        np.testing.assert_array_equal(image, pixels[n][0])
        assert label == pixels[n][1]
    assert command.main(["data", "make-shards", str(tmp_path / "animals"),
                         str(tmp_path / "ordered"), "--no-shuffle"]) == 0
    assert "wrote 1 shard and index.json" in capsys.readouterr().out
    assert [n for n, _, _ in _read_back(tmp_path / "ordered")[1]] == list(range(9))
    assert command.main(["data", "inspect", str(out)]) == 0
    assert "TarShards(9 samples in 3 shards, 3 classes" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["--shard-size", "0"], "--shard-size must be at least 1 sample, not 0"),
    (["--resize", "0"], "--resize must be at least 1 pixel, not 0"),
    (["--quality", "101"], "--quality must be from 1 to 100, not 101"),
])
def test_data_make_shards_refuses_bad_options_in_one_sentence(tmp_path, capsys, args, message):
    _numbered_folder(tmp_path / "animals", per_class=1)
    assert command.main(["data", "make-shards", str(tmp_path / "animals"), str(tmp_path / "o"),
                         *args]) == 2
    assert capsys.readouterr().err == f"cupycnn data make-shards: error: {message}\n"
    assert not (tmp_path / "o").exists()


def test_data_make_shards_problems_with_the_folders(tmp_path, capsys):
    _numbered_folder(tmp_path / "animals", per_class=1)
    assert command.main(["data", "make-shards", str(tmp_path / "animals"),
                         str(tmp_path / "animals" / "shards")]) == 2
    assert "is inside FOLDER" in capsys.readouterr().err
    assert not (tmp_path / "animals" / "shards").exists()
    assert command.main(["data", "make-shards", str(tmp_path / "nowhere"), str(tmp_path / "o")]) \
        == 2
    err = capsys.readouterr().err
    assert err.startswith("cupycnn data make-shards: error: ") and "is not a folder" in err


def test_the_console_script_runs_the_data_tools(tmp_path):
    """The installed path end to end: `python -m cupycnn data make-shards` in a fresh process,
    and `python -m cupycnn.data` is the same tool."""
    _numbered_folder(tmp_path / "animals", per_class=2)
    for module, out in (("cupycnn", "a"), ("cupycnn.data", "b")):
        argv = [sys.executable, "-m", module] + (["data"] if module == "cupycnn" else [])
        run = subprocess.run(argv + ["make-shards", str(tmp_path / "animals"),
                                     str(tmp_path / out)],
                             capture_output=True, text=True, timeout=120, cwd=ROOT)
        assert run.returncode == 0, run.stderr
        assert "6/6 images" in run.stderr
    a, b = _read_back(tmp_path / "a")[1], _read_back(tmp_path / "b")[1]
    assert [(n, label) for n, _, label in a] == [(n, label) for n, _, label in b]

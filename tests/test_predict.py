"""examples/predict.py and cupycnn/predict.py: a checkpoint written by Trainer.save_checkpoint is
rebuilt from its config and classifies image files prepared exactly as the training images were.

Two small models are trained on numpy: a greyscale one on scikit-learn's digits for 2 epochs
(test digits rendered to PNG files for prediction), and an RGB one for 10 epochs on crops of
real photos (scikit-image and scikit-learn ship them) in class folders read by ImageFolder with
resize and centre crop, which then predicts the whole photos."""
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
import threadpoolctl
from PIL import Image

import cupycnn
from cupycnn import models, optim
from cupycnn.checkpoint import CheckpointError
from cupycnn.data import (BadImageError, Digits, ImageFolder, Loader, Normalize,
                          channel_stats)
from cupycnn.data.folder import load_image
from cupycnn.predict import (load_images, load_model, predict, prepare_images,
                             probabilities)
from cupycnn.reference.softmax_xent import softmax
from cupycnn.train import Trainer

from hostile_files import reseal

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "examples" / "predict.py"
DIGIT_KWARGS = dict(num_classes=10, in_channels=1, input_size=8, widths=(16, 32),
                    block_dropout=(0.1, 0.2), hidden=64, head_dropout=0.3)
PHOTO_KWARGS = dict(num_classes=4, in_channels=3, input_size=16, widths=(8, 16),
                    block_dropout=(0.0, 0.0), hidden=32, head_dropout=0.0)
PHOTOS = {"cat": ("skimage", "data", "chelsea.png"), "coffee": ("skimage", "data", "coffee.png"),
          "flower": ("sklearn", "datasets/images", "flower.jpg"),
          "rocket": ("skimage", "data", "rocket.jpg")}
GREY_PHOTO = ("skimage", "data", "camera.png")          # a greyscale PNG (mode L)


def shipped(package, folder, name):
    # Found without importing the packages (importing sklearn.datasets takes seconds).
    path = Path(importlib.util.find_spec(package).submodule_search_locations[0]) / folder / name
    assert path.is_file(), f"{package} no longer ships {folder}/{name}"
    return path


def train_and_save(path, dataset, model_kwargs, config, batch_size, epochs):
    """`epochs` epochs of Adam on `dataset` (numpy, one BLAS thread: one core per xdist worker);
    the checkpoint at `path`; returns the trained model and the normalisation."""
    cupycnn.use("numpy")
    cupycnn.manual_seed(0)
    mean, std = channel_stats(dataset)
    model = models.build("simple_cnn", **model_kwargs)
    trainer = Trainer(model, optim.Adam(model.parameters(), lr=3e-3), progress=False,
                      config=config, classes=dataset.classes,
                      normalization={"mean": mean, "std": std})
    with threadpoolctl.threadpool_limits(1):
        trainer.fit(Loader(dataset, batch_size, shuffle=True, seed=0,
                           transform=Normalize(mean, std), prefetch=False), epochs)
    trainer.save_checkpoint(path)
    return model, (mean, std)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    """A digits model's checkpoint, and six test digits as greyscale PNG files."""
    folder = tmp_path_factory.mktemp("digits")
    train, test = Digits(train=True), Digits(train=False)
    config = {"model": "simple_cnn", "model_kwargs": DIGIT_KWARGS, "input_shape": [1, 8, 8],
              "resize": None, "crop": False, "dataset": "digits"}     # as train_cifar.py writes
    model, norm = train_and_save(folder / "digits.h5", train, DIGIT_KWARGS, config, 32, 2)
    files = []
    for i in range(6):
        files.append(folder / f"test{i}_label{test.labels[i]}.png")
        Image.fromarray(test.images[i, :, :, 0], mode="L").save(files[-1])
    return dict(checkpoint=folder / "digits.h5", model=model, norm=norm, files=files,
                images=test.images[:6], labels=test.labels[:6], classes=train.classes,
                folder=folder)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """An RGB model trained for 10 epochs on crops of four real photos in class folders
    (ImageFolder, 16x16, centre-cropped); the whole photos (other sizes) are what it then
    predicts."""
    folder = tmp_path_factory.mktemp("photos")
    root = folder / "train"
    originals = {}
    for label, source in PHOTOS.items():
        originals[label] = shipped(*source)
        with Image.open(originals[label]) as image:
            image = image.convert("RGB")
            width, height = image.size
            (root / label).mkdir(parents=True)
            for i, (left, top) in enumerate([(0, 0), (width // 4, 0), (0, height // 4),
                                             (width // 4, height // 4)]):
                part = image.crop((left, top, left + 3 * width // 4, top + 3 * height // 4))
                part.save(root / label / f"crop{i}.png")
                part.transpose(Image.FLIP_LEFT_RIGHT).save(root / label / f"flip{i}.jpg")
    dataset = ImageFolder(root, size=16, crop=True)
    config = {"model": "simple_cnn", "model_kwargs": PHOTO_KWARGS, "input_shape": [3, 16, 16],
              "resize": [16, 16], "crop": True}
    model, norm = train_and_save(folder / "photos.h5", dataset, PHOTO_KWARGS, config, 8, 10)
    return dict(checkpoint=folder / "photos.h5", model=model, norm=norm, dataset=dataset,
                config=config, originals=originals, classes=dataset.classes, folder=folder)


def expected_probabilities(model, images, norm):
    """The trained model's probabilities for uint8 images [N, H, W, C], computed in this
    process from the arrays themselves (no files, no checkpoint)."""
    cupycnn.use("numpy")
    logits = model.forward(Normalize(*norm)(images), training=False).astype(np.float64)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    return probs / probs.sum(1, keepdims=True)


def run_script(*args):
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True,
                          text=True, env=env, timeout=120)


def parse(stdout):
    """{image path: [(class name, probability), ...]} from the script's output."""
    results, current = {}, None
    for line in stdout.splitlines():
        if not line.startswith("  "):
            current = results.setdefault(line, [])
            continue
        rank, probability, name = line.split(maxsplit=2)
        assert rank == f"{len(current) + 1}.", line
        current.append((name, float(probability)))
    return results


def check_top_k(top, classes, k):
    names = [name for name, _ in top]
    probs = [p for _, p in top]
    assert len(top) == k and set(names) <= set(classes) and len(set(names)) == k
    assert probs == sorted(probs, reverse=True)
    assert all(0.0 <= p <= 1.0 for p in probs) and sum(probs) <= 1.0 + 5e-6
    return names, probs


# --------------------------------------------------------------------------------- the script

def test_script_top_k_for_digit_files(digits):
    result = run_script(*digits["files"], "--checkpoint", digits["checkpoint"], "--top-k", "3",
                        "--device", "numpy")
    assert result.returncode == 0, result.stderr
    printed = parse(result.stdout)
    assert list(printed) == [str(f) for f in digits["files"]]
    expected = expected_probabilities(digits["model"], digits["images"], digits["norm"])
    correct = 0
    for top, probs, label in zip(printed.values(), expected, digits["labels"]):
        names, values = check_top_k(top, digits["classes"], 3)
        # The same numbers as the trained model on the dataset's own arrays: the PNG decoding,
        # the greyscale conversion and the normalisation are the training pipeline's.
        best = np.argsort(-probs, kind="stable")[:3]
        assert names == [digits["classes"][k] for k in best]
        np.testing.assert_allclose(values, probs[best], atol=1e-6)
        correct += names[0] == str(label)
    assert correct >= 5, f"only {correct} of 6 digits right after two epochs"


def test_script_photos_resized_cropped_top_k_capped(photos):
    files = list(photos["originals"].values())                       # 451x300 to 640x427
    grey = shipped(*GREY_PHOTO)
    result = run_script(*files, grey, "--checkpoint", photos["checkpoint"], "--top-k", "10",
                        "--device", "numpy")
    assert result.returncode == 0, result.stderr
    printed = parse(result.stdout)
    assert list(printed) == [str(f) for f in files + [grey]]
    # What the model gives for each photo loaded as ImageFolder loads training images.
    arrays = np.stack([load_image(f, (16, 16), crop=True) for f in files + [grey]])
    expected = expected_probabilities(photos["model"], arrays, photos["norm"])
    tops = []
    for top, probs in zip(printed.values(), expected):
        names, values = check_top_k(top, photos["classes"], 4)     # capped at the 4 classes
        assert sum(values) == pytest.approx(1.0, abs=5e-6)          # all classes shown
        np.testing.assert_allclose(values, [probs[photos["classes"].index(n)] for n in names],
                                   atol=1e-6)
        tops.append(names[0])
    # Each whole photo is recognised from the crops it was trained on (measured: 0.86 to 0.89
    # for the right class after 10 epochs).
    assert tops[:4] == list(photos["originals"])


def test_script_errors_name_the_file(digits, tmp_path):
    missing = tmp_path / "nowhere.png"
    result = run_script(digits["files"][0], missing, "--checkpoint", digits["checkpoint"],
                        "--device", "numpy")
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip() == f"predict.py: error: no image file at {missing}"
    result = run_script(digits["files"][0], "--checkpoint", tmp_path / "none.h5")
    assert result.returncode == 1 and f"no checkpoint at {tmp_path / 'none.h5'}" in result.stderr
    result = run_script(digits["files"][0], "--checkpoint", digits["checkpoint"], "--top-k", "0")
    assert result.returncode == 2 and "--top-k: must be at least 1, got 0" in result.stderr


# ------------------------------------------------------------------ preparing images, in-process

def test_images_resized_and_cropped_exactly_as_at_training(photos):
    dataset = photos["dataset"]
    np.testing.assert_array_equal(load_images(dataset.files, photos["config"]), dataset.images)
    # Without crop: stretched, as ImageFolder(size=...) without crop.
    stretched = dict(photos["config"], crop=False)
    files = list(photos["originals"].values())
    np.testing.assert_array_equal(load_images(files, stretched),
                                  np.stack([load_image(f, (16, 16)) for f in files]))


def test_greyscale_and_colour_conversions(digits, photos, tmp_path):
    cupycnn.use("numpy")
    config = load_model(digits["checkpoint"])[1].config
    grey = digits["images"][0, :, :, 0]
    variants = {"L": Image.fromarray(grey, mode="L")}
    variants["RGB"] = variants["L"].convert("RGB")
    variants["RGBA"] = variants["L"].convert("RGBA")
    variants["LA"] = variants["L"].convert("LA")
    variants["P"] = variants["L"].convert("P")
    paths = []
    for mode, image in variants.items():
        paths.append(tmp_path / f"digit_{mode}.png")
        image.save(paths[-1])
    # Every encoding of the grey digit gives the model (1 channel) the training array itself.
    loaded = load_images(paths, config)
    assert loaded.shape == (5, 8, 8, 1)
    for mode, array in zip(variants, loaded):
        np.testing.assert_array_equal(array, digits["images"][0], err_msg=mode)
    # A colour image becomes Pillow's ITU-R 601-2 luma for a greyscale model.
    colour = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(colour, mode="RGB").save(tmp_path / "colour.png")
    luma = colour.astype(np.float64) @ [0.299, 0.587, 0.114]
    got = load_images([tmp_path / "colour.png"], config)[0, :, :, 0].astype(np.float64)
    assert np.abs(got - luma).max() <= 1.0
    # A greyscale photo, for an RGB model: the grey value in all three channels.
    camera = load_images([shipped(*GREY_PHOTO)], photos["config"])[0]
    assert camera.shape == (16, 16, 3) and camera.std() > 10
    np.testing.assert_array_equal(camera[..., 0], camera[..., 1])
    np.testing.assert_array_equal(camera[..., 0], camera[..., 2])


def test_sim_device_agrees_with_numpy(digits):
    cupycnn.use("numpy")
    model, checkpoint = load_model(digits["checkpoint"])
    x = prepare_images(digits["files"][:2], checkpoint.config, checkpoint.normalization)
    on_numpy = predict(model, x, checkpoint.classes, top_k=10)
    cupycnn.use("sim")
    model, checkpoint = load_model(digits["checkpoint"])
    x = prepare_images(digits["files"][:2], checkpoint.config, checkpoint.normalization)
    assert type(x) is np.ndarray and x.dtype == np.float32 and x.shape == (2, 1, 8, 8)
    on_sim = predict(model, x, checkpoint.classes, top_k=10)
    for a, b in zip(on_numpy, on_sim):
        assert [n for n, _ in a][:3] == [n for n, _ in b][:3]
        np.testing.assert_allclose(sorted(p for _, p in a), sorted(p for _, p in b), atol=1e-5)


def test_a_loaded_model_predicts_in_eval_mode_and_predict_restores_the_modes(digits):
    """load_model gives the model in evaluation mode, so model(x) predicts (batchnorm's running
    statistics, no dropout) and leaves the statistics alone; predict() runs any model in
    evaluation mode and gives it its modes back."""
    cupycnn.use("numpy")
    model, checkpoint = load_model(digits["checkpoint"])
    assert not any(layer.training for layer in model.layers())
    x = prepare_images(digits["files"], checkpoint.config, checkpoint.normalization)
    stats = {k: v.copy() for k, v in model.state_dict().items()}
    expected = probabilities(model, x)
    np.testing.assert_allclose(softmax(np.float64(model(x))), expected, rtol=1e-6)
    np.testing.assert_array_equal(model(x), model(x))                  # no dropout
    model.train()                                   # a user fine-tuning, then predicting
    model[1].eval()
    modes = [layer.training for layer in model.layers()]
    assert [[n for n, _ in top] for top in predict(model, x, checkpoint.classes, top_k=2)] == \
        [[checkpoint.classes[i] for i in np.argsort(-p, kind="stable")[:2]] for p in expected]
    np.testing.assert_array_equal(probabilities(model, x), expected)
    assert [layer.training for layer in model.layers()] == modes
    for k, v in model.state_dict().items():        # no running statistic moved
        np.testing.assert_array_equal(v, stats[k], err_msg=k)


# -------------------------------------------------------------------------------- the errors

def rewrite(source, target, **fields):
    """A copy of checkpoint `source` at `target` with some fields of its manifest replaced
    and its digests recomputed: a well-formed checkpoint with other contents."""
    shutil.copyfile(source, target)
    return reseal(target, edit=lambda header: header["document"].update(fields))


def good_config(digits):
    cupycnn.use("numpy")
    return load_model(digits["checkpoint"])[1].config


@pytest.mark.parametrize("case, message", [
    ("no config", "holds no model configuration: it was saved without one"),
    ("config without input_shape", "its config lacks input_shape"),
    ("unknown model", "names the model 'lenet', which is not in cupycnn.models.REGISTRY"),
    ("other widths", "the checkpoint does not match the model"),
    ("bad kwargs", "cannot build simple_cnn"),
    ("4 channels", "the model takes 4-channel images"),
    ("resize disagrees", "resize [16, 16] disagrees with the input_shape [1, 8, 8]"),
    ("channels disagree", "model_kwargs in_channels=1 disagrees with the input_shape [3, 8, 8]"),
    ("no normalization", "holds no input normalisation"),
    ("3 means", "the normalisation mean has 3 values; the model takes 1 channels"),
])
def test_checkpoint_problems_are_named(digits, tmp_path, case, message):
    config = good_config(digits)
    kwargs = config["model_kwargs"]
    changes = {
        "no config": dict(config={}),
        "config without input_shape": dict(config={k: v for k, v in config.items()
                                                   if k != "input_shape"}),
        "unknown model": dict(config=dict(config, model="lenet")),
        "other widths": dict(config=dict(config, model_kwargs=dict(kwargs, widths=[16, 16]))),
        "bad kwargs": dict(config=dict(config, model_kwargs=dict(kwargs, depth=3))),
        "4 channels": dict(config=dict(config, input_shape=[4, 8, 8])),
        "resize disagrees": dict(config=dict(config, resize=[16, 16])),
        "channels disagree": dict(config=dict(config, input_shape=[3, 8, 8])),
        "no normalization": dict(normalization=None),
        "3 means": dict(normalization={"mean": [0.1, 0.2, 0.3], "std": [0.2]}),
    }[case]
    path = rewrite(digits["checkpoint"], tmp_path / "bad.h5", **changes)
    with pytest.raises(CheckpointError, match=str(path)) as error:
        load_model(path)
    assert message in str(error.value)


def test_classes_that_do_not_match_the_outputs(digits, tmp_path):
    path = rewrite(digits["checkpoint"], tmp_path / "bad.h5", classes=["a", "b"])
    cupycnn.use("numpy")
    model, checkpoint = load_model(path)
    x = prepare_images(digits["files"][:1], checkpoint.config, checkpoint.normalization)
    with pytest.raises(CheckpointError, match="the model has 10 outputs but the checkpoint "
                                              "names 2 classes"):
        predict(model, x, checkpoint.classes)


def test_files_that_are_not_checkpoints(digits, tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("predict_script", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    image = digits["files"][0]

    def error_of(*argv):
        assert script.main([str(a) for a in argv] + ["--device", "numpy"]) == 1
        out, err = capsys.readouterr()
        assert out == "" and err.startswith("predict.py: error: ")
        return err

    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(digits["checkpoint"].read_bytes()[:3000])
    assert "the checkpoint is damaged: the file is truncated" in \
        error_of(image, "--checkpoint", truncated)
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = np.zeros(3)
    assert "is an HDF5 file but not a cupycnn checkpoint" in error_of(image, "--checkpoint",
                                                                     other)
    text = tmp_path / "notes.png"
    text.write_text("not an image", encoding="utf-8")
    assert f"cannot read the image {text}" in error_of(image, text, "--checkpoint",
                                                       digits["checkpoint"])
    assert f"no image file at {tmp_path} (it is a folder)" in \
        error_of(tmp_path, "--checkpoint", digits["checkpoint"])
    with pytest.raises(BadImageError):
        load_images([text], good_config(digits))

"""cupycnn.data.transforms: what the loader calls on each uint8 batch. Parameter mappings from
torchvision and Keras, seeds and step counters, checkpoints, eval counterparts, Compose, and the
dataset statistics helper; the same seed gives the same batches on numpy and sim."""
import numpy as np
import pytest

import cupycnn
from cupycnn import devices as dev
from cupycnn.data import transforms as T
from cupycnn.ops import augment as ops
from cupycnn.reference import augment as reference
from cupycnn.reference.augment import AffineRanges
from helpers import DEVICES


def _images(rng, shape=(4, 9, 8, 3)):
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


@pytest.fixture(params=DEVICES)
def device(request):
    cupycnn.use(request.param)
    dev.set_poison(request.param == "sim")
    return request.param


def _make_all(seed):
    return {
        "Normalize": T.Normalize(T.CIFAR10_MEAN, T.CIFAR10_STD),
        "RandomCropFlip": T.RandomCropFlip(4, T.CIFAR10_MEAN, T.CIFAR10_STD, seed=seed),
        "RandomAffine": T.RandomAffine(20, translate=(0.1, 0.2), scale=(0.8, 1.2), flip=True,
                                       mean=T.CIFAR10_MEAN, std=T.CIFAR10_STD, seed=seed),
        "ImageDataGenerator": T.ImageDataGenerator(15, 0.1, 0.1, 0.2, horizontal_flip=True,
                                                   mean=T.CIFAR10_MEAN, std=T.CIFAR10_STD,
                                                   seed=seed),
    }


@pytest.mark.parametrize("name", ["Normalize", "RandomCropFlip", "RandomAffine",
                                  "ImageDataGenerator"])
def test_the_same_seed_gives_the_same_batches_on_numpy_and_sim(rng, name):
    images = _images(rng)
    outputs = {}
    for device_name in ("numpy", "sim"):
        cupycnn.use(device_name)
        transform = _make_all(seed=1234)[name]
        x = cupycnn.asarray(images)
        outputs[device_name] = [cupycnn.asnumpy(transform(x)) for _ in range(3)]
    for a, b in zip(outputs["numpy"], outputs["sim"]):
        assert a.dtype == b.dtype == np.float32 and a.shape == (4, 3, 9, 8)
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)
    if name != "Normalize":           # three steps, three different augmentations
        assert not np.array_equal(outputs["numpy"][0], outputs["numpy"][1])


def test_each_call_is_one_stream_and_the_state_replays(device, rng):
    images = cupycnn.asarray(_images(rng))
    for name, transform in _make_all(seed=99).items():
        if name == "Normalize":
            assert transform.random_state() == {}
            continue
        first = cupycnn.asnumpy(transform(images))
        state = transform.random_state()
        assert state == {"seed": 99, "step": 1}
        second = cupycnn.asnumpy(transform(images))
        transform.set_random_state(state)                    # back to after the first call
        np.testing.assert_array_equal(cupycnn.asnumpy(transform(images)), second, err_msg=name)
        assert transform.random_state()["step"] == 2
        fresh = _make_all(seed=99)[name]
        np.testing.assert_array_equal(cupycnn.asnumpy(fresh(images)), first, err_msg=name)


def test_random_crop_flip_is_the_op_with_the_transforms_seed_and_step(device, rng):
    images = _images(rng)
    t = T.RandomCropFlip(padding=2, mean=(0.5, 0.4, 0.3), std=0.25, seed=5)
    with pytest.raises(ValueError, match=r"RandomCropFlip.params: no batch transformed yet"):
        t.params(4)
    t(cupycnn.asarray(images))
    with pytest.raises(ValueError, match="random_crop_flip: images must be uint8"):
        t(cupycnn.asarray(images.astype(np.float32)))          # refused: no step is used up
    assert t.step == 1
    out = cupycnn.asnumpy(t(cupycnn.asarray(images)))
    expected = reference.random_crop_flip(images, (0.5, 0.4, 0.3), 0.25, 2, seed=5, stream=1,
                                          dtype=np.float64)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(cupycnn.asnumpy(t.params(4)),
                                  reference.random_crop_flip_params(4, 2, seed=5, stream=1))
    np.testing.assert_array_equal(cupycnn.asnumpy(t.params(4, step=0)),
                                  reference.random_crop_flip_params(4, 2, seed=5, stream=0))


def test_seeds_come_from_the_library_generator():
    cupycnn.manual_seed(3)
    a, b = T.RandomCropFlip(), T.RandomCropFlip()
    cupycnn.manual_seed(3)
    assert T.RandomCropFlip().seed == a.seed and a.seed != b.seed


def test_eval_counterparts_only_normalise(device, rng):
    images = cupycnn.asarray(_images(rng))
    for name, transform in _make_all(seed=1).items():
        evaluation = transform.eval()
        assert isinstance(evaluation, T.Normalize), name
        assert (evaluation.mean, evaluation.std) == (T.CIFAR10_MEAN, T.CIFAR10_STD)
        np.testing.assert_array_equal(cupycnn.asnumpy(evaluation(images)),
                                      cupycnn.asnumpy(ops.normalize(images, T.CIFAR10_MEAN,
                                                                    T.CIFAR10_STD)))


def test_image_data_generator_maps_keras_parameters():
    g = T.ImageDataGenerator(rotation_range=15, width_shift_range=0.1, height_shift_range=3,
                             zoom_range=0.2, horizontal_flip=True)
    ranges = g.ranges_for(height=20, width=32)
    assert ranges.rotation == (-15, 15)
    assert ranges.shift_x == pytest.approx((-3.2, 3.2))       # a fraction of the width
    assert ranges.shift_y == (-3, 3)                          # 3 >= 1: pixels
    assert ranges.zoom_x == ranges.zoom_y == pytest.approx((0.8, 1.2))
    assert not ranges.same_zoom and not ranges.zoom_is_magnification
    assert ranges.flip_probability == 0.5
    assert (g.interpolation, g.fill_mode, g.cval) == ("bilinear", "nearest", 0.0)  # Keras defaults
    assert T.ImageDataGenerator(zoom_range=(0.5, 0.9)).ranges.zoom_x == (0.5, 0.9)
    assert T.ImageDataGenerator(interpolation_order=0).interpolation == "nearest"
    params = cupycnn.asnumpy(g.params(2000, 20, 32, step=0))
    for column, (low, high) in enumerate([(-15, 15), (0.8, 1.2), (0.8, 1.2), (-3.2, 3.2),
                                          (-3, 3)]):
        assert low <= params[:, column].min() and params[:, column].max() <= high
    assert (params[:, 1] != params[:, 2]).all()             # Keras: independent x and y zoom
    assert abs(params[:, 5].mean() - 0.5) < 0.05


def test_random_affine_maps_torchvision_parameters():
    t = T.RandomAffine(degrees=(-5, 25), translate=(0.25, 0.5), scale=(0.9, 1.1), seed=1)
    ranges = t.ranges_for(height=8, width=12)
    assert ranges.rotation == (-5, 25)
    assert ranges.shift_x == (-3, 3) and ranges.shift_y == (-4, 4)
    assert ranges.zoom_x == (0.9, 1.1) and ranges.same_zoom and ranges.zoom_is_magnification
    assert ranges.flip_probability == 0.0
    assert (t.interpolation, t.fill_mode, t.cval) == ("nearest", "constant", 0.0)  # torchvision
    params = cupycnn.asnumpy(t.params(500, 8, 12, step=0))
    np.testing.assert_array_equal(params[:, 1], params[:, 2])  # one scale for both axes
    assert T.RandomAffine(10).ranges.rotation == (-10, 10)


def test_torchvision_scale_and_keras_zoom_are_reciprocal(device, rng):
    """scale=0.5 (torchvision: half size) and zoom_range=(2, 2) (Keras: zoom out by 2) are the
    same picture: every other source pixel around the centre, the rest filled."""
    images = cupycnn.asarray(_images(rng, (1, 9, 9, 1)))
    torchvision_like = T.RandomAffine(0, scale=(0.5, 0.5), seed=1)
    keras_like = T.ImageDataGenerator(zoom_range=(2, 2), fill_mode="constant",
                                      interpolation_order=0, seed=1)
    np.testing.assert_array_equal(cupycnn.asnumpy(torchvision_like(images)),
                                  cupycnn.asnumpy(keras_like(images)))


def test_compose_chains_and_gathers_random_state(device, rng):
    images = cupycnn.asarray(_images(rng))
    crop = T.RandomCropFlip(4, 0.5, 0.25, seed=8)
    composed = T.Compose(crop, lambda x: x * 2)
    out = cupycnn.asnumpy(composed(images))
    expected = 2 * reference.random_crop_flip(cupycnn.asnumpy(images), 0.5, 0.25, 4, seed=8,
                                              stream=0, dtype=np.float64)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    assert composed.random_state() == {"transforms": [{"seed": 8, "step": 1}, {}]}
    composed.set_random_state({"transforms": [{"seed": 8, "step": 0}, {}]})
    np.testing.assert_array_equal(cupycnn.asnumpy(composed(images)), out)
    evaluation = composed.eval()
    np.testing.assert_array_equal(cupycnn.asnumpy(evaluation(images)),
                                  2 * cupycnn.asnumpy(ops.normalize(images, 0.5, 0.25)))


def test_channel_stats_of_a_uint8_dataset(rng):
    images = rng.integers(0, 256, size=(37, 5, 4, 3), dtype=np.uint8)
    images[..., 1] //= 3                                    # channels with different statistics

    class Dataset:
        pass
    dataset = Dataset()
    dataset.images = images
    mean, std = T.channel_stats(dataset, chunk=8)             # several chunks, one partial
    pixels = images.reshape(-1, 3).astype(np.float64) / 255
    np.testing.assert_allclose(mean, pixels.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(std, pixels.std(axis=0), rtol=1e-9)
    # Normalising by them gives zero mean and unit variance per channel.
    cupycnn.use("numpy")
    out = T.Normalize(mean, std)(images).astype(np.float64)
    np.testing.assert_allclose(out.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(out.std(axis=(0, 2, 3)), 1, atol=1e-5)
    with pytest.raises(ValueError, match=r"channel_stats: images must be uint8 with shape "
                                         r"\(N, H, W, C\), got float32 \(2, 3\)"):
        T.channel_stats(np.zeros((2, 3), np.float32))


def test_bad_arguments_name_the_transform():
    with pytest.raises(ValueError, match="RandomCropFlip: padding must be a non-negative"):
        T.RandomCropFlip(padding=-1)
    with pytest.raises(ValueError, match="RandomCropFlip: flip must be True, False or a "
                                         "probability"):
        T.RandomCropFlip(flip=2)
    with pytest.raises(ValueError, match="RandomAffine: degrees must be non-negative"):
        T.RandomAffine(-5)
    with pytest.raises(ValueError, match="RandomAffine: translate values must be in"):
        T.RandomAffine(0, translate=(1.5, 0))
    with pytest.raises(ValueError, match=r"RandomAffine: scale must be positive, got \(0, 1\)"):
        T.RandomAffine(0, scale=(0, 1))
    with pytest.raises(ValueError, match=r"ImageDataGenerator: zoom_range 1.5 gives zooms in "
                                         r"\[-0.5, 2.5\]; zooms must be positive"):
        T.ImageDataGenerator(zoom_range=1.5)
    with pytest.raises(ValueError, match="ImageDataGenerator: interpolation_order must be 0"):
        T.ImageDataGenerator(interpolation_order=3)
    with pytest.raises(ValueError, match="ImageDataGenerator: fill_mode must be one of"):
        T.ImageDataGenerator(fill_mode="mirror")
    with pytest.raises(ValueError, match="ImageDataGenerator: width_shift_range must be a "
                                         "non-negative number"):
        T.ImageDataGenerator(width_shift_range=[-1, 0, 1])
    with pytest.raises(ValueError, match="AffineTransform: ranges must be an AffineRanges"):
        T.AffineTransform({"rotation": (0, 1)})
    cupycnn.use("numpy")
    with pytest.raises(ValueError, match=r"normalize: mean must have shape \(1,\) or \(C=1,\)"):
        T.Normalize(T.CIFAR10_MEAN, T.CIFAR10_STD)(np.zeros((2, 4, 4, 1), np.uint8))


def test_affine_transform_takes_pixel_ranges_as_given(device, rng):
    images = _images(rng, (2, 7, 6, 3))
    ranges = AffineRanges(rotation=(-30, 30), shift_x=(-2, 2), flip_probability=0.5)
    t = T.AffineTransform(ranges, interpolation="bilinear", fill_mode="reflect", mean=0.5,
                          std=0.2, seed=77)
    out = cupycnn.asnumpy(t(cupycnn.asarray(images)))
    expected = reference.affine_warp(images, 0.5, 0.2, ranges, seed=77, stream=0,
                                     interpolation="bilinear", fill_mode="reflect",
                                     dtype=np.float64)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    assert t.ranges_for(7, 6) is ranges


def test_the_benchmark_runs_on_the_cpu(capsys):
    """benchmarks/augment.py on sim: our kernels against the NumPy reference, one table."""
    import importlib.util
    from pathlib import Path
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "augment.py"
    spec = importlib.util.spec_from_file_location("benchmark_augment", path)
    benchmark = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(benchmark)
    benchmark.main(["--device", "sim", "--batch", "4", "--iterations", "1", "--repeats", "1"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[1] == "| transform | cupycnn kernels (sim) | NumPy reference | speed-up |"
    assert [line.split(" | ")[0] for line in lines[3:]] == ["| normalize", "| random_crop_flip",
                                                           "| affine_warp"]

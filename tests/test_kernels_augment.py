"""kernels/augment.cu against reference/augment.py on every kernel device, the reference against
scipy.ndimage and NumPy, and the properties the transforms promise (identity, flips, integer
shifts, quarter turns, fill modes as np.pad modes, the same draws everywhere)."""
import numpy as np
import pytest

import cupycnn
from cupycnn import devices as dev
from cupycnn import sim
from cupycnn.ops import augment as ops
from cupycnn.reference import augment as reference
from cupycnn.reference.augment import AffineRanges
from helpers import DEVICES, assert_matches

# Batch 1 (a single pixel of 3 channels: one value alone could cancel to ~0 and make a relative
# error meaningless), odd and non-square sizes, 1 and 3 channels; 17 x 16 = 272 pixels spans
# two blocks.
SHAPES = [(1, 1, 1, 3), (1, 5, 7, 3), (2, 9, 4, 1), (3, 17, 16, 3)]
NP_PAD_MODE = {"constant": "constant", "nearest": "edge", "reflect": "symmetric", "wrap": "wrap"}


def _images(rng, shape):
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


def _normalisation(rng, channels):
    return rng.uniform(0.3, 0.6, channels), rng.uniform(0.15, 0.3, channels)


def _key(rng):
    return int(rng.integers(0, 2 ** 63)) * 2 + 1, int(rng.integers(0, 2 ** 40))


def _random_ranges(rng, **overrides):
    ranges = dict(rotation=(-40.0, 35.0), zoom_x=(0.7, 1.4), zoom_y=(0.8, 1.3),
                  shift_x=(-3.0, 2.5), shift_y=(-2.0, 3.0), flip_probability=0.5)
    ranges.update(overrides)
    return AffineRanges(**ranges)


@pytest.fixture(params=DEVICES)
def device(request):
    """The properties hold for the reference (numpy) and the kernels (sim, outputs poisoned)."""
    cupycnn.use(request.param)
    if request.param == "sim":
        sim.set_thread_order("natural")
        dev.set_poison(True)
    return request.param


# -------------------------------------------------------------- kernels against the reference

@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_normalize(kernel_device, rng, shape):
    images = _images(rng, shape)
    mean, std = _normalisation(rng, shape[-1])
    out = ops.normalize(cupycnn.asarray(images), mean, std)
    assert out.dtype == np.float32
    assert_matches(out, reference.normalize(images, mean, std, dtype=np.float64))


@pytest.mark.parametrize("padding", [0, 1, 4])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_random_crop_flip(kernel_device, rng, shape, padding):
    images = _images(rng, shape)
    mean, std = _normalisation(rng, shape[-1])
    seed, stream = _key(rng)
    out = ops.random_crop_flip(cupycnn.asarray(images), mean, std, padding, seed=seed,
                               stream=stream)
    assert_matches(out, reference.random_crop_flip(images, mean, std, padding, seed=seed,
                                                   stream=stream, dtype=np.float64))


def test_random_crop_flip_params_are_the_references_bit_for_bit(kernel_device, rng):
    seed, stream = _key(rng)
    batch = 300                                     # two blocks of PARAMS_THREADS
    got = cupycnn.asnumpy(ops.random_crop_flip_params(batch, 4, seed=seed, stream=stream))
    expected = reference.random_crop_flip_params(batch, 4, seed=seed, stream=stream)
    np.testing.assert_array_equal(got, expected)
    assert_matches(got, expected.astype(np.float64))
    assert got[:, :2].min() >= 0 and got[:, :2].max() <= 8 and set(got[:, 2]) == {0, 1}


@pytest.mark.parametrize("same_zoom, magnification", [(False, False), (True, True)],
                         ids=["keras", "torchvision"])
def test_affine_params_are_the_references_bit_for_bit(kernel_device, rng, same_zoom,
                                                      magnification):
    seed, stream = _key(rng)
    ranges = _random_ranges(rng, same_zoom=same_zoom, zoom_is_magnification=magnification)
    got = cupycnn.asnumpy(ops.affine_params(300, ranges, seed=seed, stream=stream))
    expected = reference.affine_params(300, ranges, seed=seed, stream=stream)
    np.testing.assert_array_equal(got, expected)
    assert_matches(got, expected.astype(np.float64))


@pytest.mark.parametrize("fill_mode", reference.FILL_MODES)
@pytest.mark.parametrize("interpolation", reference.INTERPOLATIONS)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_affine_warp(kernel_device, rng, shape, interpolation, fill_mode):
    images = _images(rng, shape)
    mean, std = _normalisation(rng, shape[-1])
    seed, stream = _key(rng)
    ranges = _random_ranges(rng)
    cval = float(rng.uniform(0, 255))
    out = ops.affine_warp(cupycnn.asarray(images), mean, std, ranges, seed=seed, stream=stream,
                          interpolation=interpolation, fill_mode=fill_mode, cval=cval)
    assert_matches(out, reference.affine_warp(images, mean, std, ranges, seed=seed,
                                              stream=stream, interpolation=interpolation,
                                              fill_mode=fill_mode, cval=cval, dtype=np.float64))


@pytest.mark.parametrize("interpolation", reference.INTERPOLATIONS)
def test_affine_warp_isotropic_magnification_far_outside(kernel_device, rng, interpolation):
    """torchvision's scale (one magnification for both axes), strong zoom-out and shifts that
    send taps several image widths away: reflect and wrap fold them back."""
    images = _images(rng, (2, 6, 11, 3))
    mean, std = _normalisation(rng, 3)
    seed, stream = _key(rng)
    ranges = _random_ranges(rng, zoom_x=(0.2, 0.4), shift_x=(-30.0, 30.0), same_zoom=True,
                            zoom_is_magnification=True)
    for fill_mode in ("reflect", "wrap"):
        out = ops.affine_warp(cupycnn.asarray(images), mean, std, ranges, seed=seed,
                              stream=stream, interpolation=interpolation, fill_mode=fill_mode)
        assert_matches(out, reference.affine_warp(images, mean, std, ranges, seed=seed,
                                                  stream=stream, interpolation=interpolation,
                                                  fill_mode=fill_mode, dtype=np.float64))


# -------------------------------------------------------------- the reference, independently

def test_random_crop_flip_reference_is_pad_slice_and_flip(rng):
    images = _images(rng, (5, 7, 6, 3))
    seed, stream = _key(rng)
    params = reference.random_crop_flip_params(5, 3, seed=seed, stream=stream)
    out = reference.random_crop_flip(images, 0.0, 1.0, 3, seed=seed, stream=stream,
                                     dtype=np.float64)
    for b, (oy, ox, flip) in enumerate(params):
        crop = np.pad(images[b], ((3, 3), (3, 3), (0, 0)))[oy:oy + 7, ox:ox + 6]
        if flip:
            crop = crop[:, ::-1]
        np.testing.assert_array_equal(out[b] * 255, crop.transpose(2, 0, 1))


@pytest.mark.parametrize("fill_mode, scipy_mode", [("constant", "grid-constant"),
                                                   ("nearest", "nearest"),
                                                   ("reflect", "reflect"),
                                                   ("wrap", "grid-wrap")])
@pytest.mark.parametrize("interpolation, order", [("nearest", 0), ("bilinear", 1)])
def test_affine_warp_reference_equals_scipy_ndimage(rng, fill_mode, scipy_mode, interpolation,
                                                    order):
    """The geometry is scipy.ndimage.affine_transform's (what Keras calls) with the matrix of
    the docs: source (x, y) = c + R(angle) diag(zoom) ((x, y) - c - shift)."""
    from scipy import ndimage
    height, width = 11, 8
    images = _images(rng, (1, height, width, 1))
    angle, zoom_x, zoom_y, shift_x, shift_y = 23.0, 1.3, 0.7, 1.5, -2.25
    ranges = AffineRanges(rotation=(angle, angle), zoom_x=(zoom_x, zoom_x),
                          zoom_y=(zoom_y, zoom_y), shift_x=(shift_x, shift_x),
                          shift_y=(shift_y, shift_y))
    out = reference.affine_warp(images, 0.0, 1.0, ranges, seed=0, stream=0,
                                interpolation=interpolation, fill_mode=fill_mode, cval=50.0,
                                dtype=np.float64)[0, 0] * 255
    t = np.deg2rad(angle)
    xy = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]]) @ np.diag([zoom_x, zoom_y])
    matrix = xy[::-1, ::-1]                                    # the same map on (row, column)
    centre = np.array([(height - 1) / 2, (width - 1) / 2])
    offset = centre - matrix @ (centre + np.array([shift_y, shift_x]))
    expected = ndimage.affine_transform(images[0, :, :, 0].astype(np.float64), matrix, offset,
                                        order=order, mode=scipy_mode, cval=50.0)
    # float32 geometry against scipy's float64: a few 1e-4 of a grey level.
    np.testing.assert_allclose(out, expected, atol=1e-3)


def test_sincos_degrees_is_accurate_and_exact_at_quarter_turns():
    degrees = np.linspace(-400, 400, 200001, dtype=np.float32)
    s, c = reference.sincos_degrees(degrees)
    radians = np.deg2rad(degrees.astype(np.float64))
    assert np.abs(s - np.sin(radians)).max() < 2.5e-7
    assert np.abs(c - np.cos(radians)).max() < 2.5e-7
    quarter = np.arange(-4, 5, dtype=np.float32) * 90
    s, c = reference.sincos_degrees(quarter)
    np.testing.assert_array_equal(s, [0, 1, 0, -1, 0, 1, 0, -1, 0])
    np.testing.assert_array_equal(c, [1, 0, -1, 0, 1, 0, -1, 0, 1])


def test_draws_are_uniform_and_keyed_by_seed_stream_and_image():
    n = 20000
    crops = reference.random_crop_flip_params(n, 4, seed=7, stream=3)
    counts = np.bincount(crops[:, :2].ravel(), minlength=9)
    assert len(counts) == 9 and np.abs(counts / (2 * n) - 1 / 9).max() < 0.01
    assert abs(crops[:, 2].mean() - 0.5) < 0.02
    ranges = AffineRanges(rotation=(-10, 30), zoom_x=(0.5, 2), flip_probability=0.25)
    params = reference.affine_params(n, ranges, seed=7, stream=3)
    assert -10 <= params[:, 0].min() and params[:, 0].max() < 30
    assert abs(params[:, 0].mean() - 10) < 0.5 and abs(params[:, 5].mean() - 0.25) < 0.02
    np.testing.assert_array_equal(params[:, 2], 1.0)           # zoom_y's range is (1, 1)
    # Another stream, another seed: other numbers; image b's draws do not depend on the batch.
    assert (reference.affine_params(n, ranges, seed=7, stream=4)[:, 0] != params[:, 0]).mean() > 0.99
    assert (reference.affine_params(n, ranges, seed=8, stream=3)[:, 0] != params[:, 0]).mean() > 0.99
    np.testing.assert_array_equal(reference.affine_params(5, ranges, seed=7, stream=3), params[:5])


# ------------------------------------------------------------------------------- properties

def _normalized(images, mean, std):
    return cupycnn.asnumpy(ops.normalize(cupycnn.asarray(np.ascontiguousarray(images)), mean,
                                         std))


@pytest.mark.parametrize("fill_mode", reference.FILL_MODES)
@pytest.mark.parametrize("interpolation", reference.INTERPOLATIONS)
def test_zero_rotation_shift_and_zoom_is_the_identity(device, rng, interpolation, fill_mode):
    images = _images(rng, (2, 7, 10, 3))
    mean, std = _normalisation(rng, 3)
    out = ops.affine_warp(cupycnn.asarray(images), mean, std, AffineRanges(), seed=5, stream=0,
                          interpolation=interpolation, fill_mode=fill_mode, cval=99.0)
    np.testing.assert_array_equal(cupycnn.asnumpy(out), _normalized(images, mean, std))
    out = ops.random_crop_flip(cupycnn.asarray(images), mean, std, 0, seed=5, stream=0,
                               flip_probability=0.0)
    np.testing.assert_array_equal(cupycnn.asnumpy(out), _normalized(images, mean, std))


def test_a_flip_twice_is_the_identity(device, rng):
    images = _images(rng, (3, 5, 8, 3))
    flipped = np.ascontiguousarray(images[:, :, ::-1])
    mean, std = _normalisation(rng, 3)
    always = AffineRanges(flip_probability=1.0)
    for name, flip in [("affine_warp", lambda x: ops.affine_warp(x, mean, std, always, seed=1,
                                                                  stream=0)),
                       ("random_crop_flip", lambda x: ops.random_crop_flip(
                           x, mean, std, 0, seed=1, stream=0, flip_probability=1.0))]:
        np.testing.assert_array_equal(cupycnn.asnumpy(flip(cupycnn.asarray(images))),
                                      _normalized(flipped, mean, std), err_msg=name)
        np.testing.assert_array_equal(cupycnn.asnumpy(flip(cupycnn.asarray(flipped))),
                                      _normalized(images, mean, std), err_msg=name)


@pytest.mark.parametrize("interpolation", reference.INTERPOLATIONS)
def test_an_integer_shift_with_constant_fill_is_a_numpy_slice(device, rng, interpolation):
    images = _images(rng, (2, 9, 7, 3))
    mean, std = _normalisation(rng, 3)
    tx, ty, cval = 3, -2, 17
    ranges = AffineRanges(shift_x=(tx, tx), shift_y=(ty, ty))
    out = ops.affine_warp(cupycnn.asarray(images), mean, std, ranges, seed=2, stream=9,
                          interpolation=interpolation, fill_mode="constant", cval=cval)
    expected = np.full_like(images, cval)
    expected[:, 0:9 + ty, tx:7] = images[:, -ty:9, 0:7 - tx]     # content moves right 3, up 2
    np.testing.assert_array_equal(cupycnn.asnumpy(out), _normalized(expected, mean, std))


@pytest.mark.parametrize("fill_mode", reference.FILL_MODES)
def test_fill_modes_are_numpy_pad_modes(device, rng, fill_mode):
    """A shift larger than the image: every output pixel is a padded pixel, taken as np.pad
    (constant, edge, symmetric, wrap) takes it."""
    height, width, tx, ty, cval = 4, 6, 13, -9, 201
    images = _images(rng, (2, height, width, 1))
    mean, std = _normalisation(rng, 1)
    ranges = AffineRanges(shift_x=(tx, tx), shift_y=(ty, ty))
    out = ops.affine_warp(cupycnn.asarray(images), mean, std, ranges, seed=3, stream=1,
                          interpolation="nearest", fill_mode=fill_mode, cval=cval)
    pad = 20
    kwargs = {"constant_values": cval} if fill_mode == "constant" else {}
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode=NP_PAD_MODE[fill_mode],
                    **kwargs)
    expected = padded[:, pad - ty:pad - ty + height, pad - tx:pad - tx + width]
    np.testing.assert_array_equal(cupycnn.asnumpy(out), _normalized(expected, mean, std))


@pytest.mark.parametrize("size", [6, 7])
@pytest.mark.parametrize("interpolation", reference.INTERPOLATIONS)
def test_quarter_turns_of_a_square_image_are_np_rot90(device, rng, size, interpolation):
    images = _images(rng, (2, size, size, 3))
    mean, std = _normalisation(rng, 3)
    for degrees, k in [(90, 1), (180, 2), (-90, -1), (270, -1)]:
        ranges = AffineRanges(rotation=(degrees, degrees))
        out = ops.affine_warp(cupycnn.asarray(images), mean, std, ranges, seed=4, stream=0,
                              interpolation=interpolation, fill_mode="constant")
        expected = np.rot90(images, k=k, axes=(1, 2))             # counter-clockwise for k > 0
        np.testing.assert_array_equal(cupycnn.asnumpy(out), _normalized(expected, mean, std),
                                      err_msg=f"{degrees} degrees")


def test_keras_zoom_two_samples_every_other_pixel(device, rng):
    """Keras' zoom z is the sampling step: z = 2 shows the image at half size (zooms out)."""
    images = _images(rng, (1, 9, 9, 1))
    ranges = AffineRanges(zoom_x=(2, 2), zoom_y=(2, 2))
    out = ops.affine_warp(cupycnn.asarray(images), 0.0, 1.0, ranges, seed=0, stream=0,
                          interpolation="nearest", fill_mode="constant", cval=0)
    expected = np.zeros_like(images)
    expected[0, 2:7, 2:7] = images[0, 0:9:2, 0:9:2]        # out[y, x] = in[2y - 4, 2x - 4]
    np.testing.assert_array_equal(cupycnn.asnumpy(out), _normalized(expected, 0.0, 1.0))
    magnified = AffineRanges(zoom_x=(0.5, 0.5), same_zoom=True, zoom_is_magnification=True)
    out = ops.affine_warp(cupycnn.asarray(images), 0.0, 1.0, magnified, seed=0, stream=0,
                          interpolation="nearest", fill_mode="constant", cval=0)
    np.testing.assert_array_equal(cupycnn.asnumpy(out), _normalized(expected, 0.0, 1.0))


def test_the_same_seed_gives_the_same_augmentation_on_numpy_and_sim(rng):
    images = _images(rng, (4, 9, 8, 3))
    mean, std = _normalisation(rng, 3)
    seed, stream = _key(rng)
    ranges = _random_ranges(rng)
    results = {}
    for name in ("numpy", "sim"):
        cupycnn.use(name)
        x = cupycnn.asarray(images)
        results[name] = [cupycnn.asnumpy(r) for r in (
            ops.random_crop_flip_params(4, 4, seed=seed, stream=stream),
            ops.affine_params(4, ranges, seed=seed, stream=stream),
            ops.random_crop_flip(x, mean, std, 4, seed=seed, stream=stream),
            ops.affine_warp(x, mean, std, ranges, seed=seed, stream=stream,
                            interpolation="nearest", fill_mode="reflect"),
            ops.affine_warp(x, mean, std, ranges, seed=seed, stream=stream))]
    numpy_results, sim_results = results["numpy"], results["sim"]
    for a, b in zip(numpy_results[:2], sim_results[:2]):
        np.testing.assert_array_equal(a, b)                 # the parameters: bit for bit
    for a, b in zip(numpy_results[2:], sim_results[2:]):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)   # float32 pixels: to rounding


# ------------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("name", ["sim", "numpy"])
def test_bad_input_names_the_op_and_the_shapes(rng, name):
    cupycnn.use(name)
    images = cupycnn.asarray(_images(rng, (2, 5, 6, 3)))
    with pytest.raises(ValueError, match="normalize: images must be uint8 on the .* got float32"):
        ops.normalize(cupycnn.asarray(np.zeros((2, 5, 6, 3), np.float32)), 0.5, 0.2)
    with pytest.raises(ValueError, match=r"random_crop_flip: images must have shape "
                                         r"\(B, H, W, C\), got \(5, 6, 3\)"):
        ops.random_crop_flip(images[0], 0.5, 0.2, 4, seed=1, stream=0)
    with pytest.raises(ValueError, match=r"normalize: mean must have shape \(1,\) or \(C=3,\) "
                                         r"for images of 3 channels, got \(2,\)"):
        ops.normalize(images, (0.5, 0.5), 0.2)
    with pytest.raises(ValueError, match="normalize: std must be positive"):
        ops.normalize(images, 0.5, (0.2, 0.0, 0.2))
    with pytest.raises(ValueError, match="affine_warp: fill_mode must be one of constant, "
                                         "nearest, reflect, wrap, got 'mirror'"):
        ops.affine_warp(images, 0.5, 0.2, AffineRanges(), seed=1, stream=0, fill_mode="mirror")
    with pytest.raises(ValueError, match="affine_warp: interpolation must be one of"):
        ops.affine_warp(images, 0.5, 0.2, AffineRanges(), seed=1, stream=0,
                        interpolation="bicubic")
    with pytest.raises(ValueError, match=r"affine_params: zoom_x must be positive"):
        ops.affine_params(2, AffineRanges(zoom_x=(0.0, 1.0)), seed=1, stream=0)
    with pytest.raises(ValueError, match=r"affine_warp: rotation must be finite with low <= "
                                         r"high, got \(10, -10\)"):
        ops.affine_warp(images, 0.5, 0.2, AffineRanges(rotation=(10, -10)), seed=1, stream=0)
    with pytest.raises(ValueError, match=r"random_crop_flip: seed must be an integer in "
                                         r"\[0, 2\^64\), got -1"):
        ops.random_crop_flip(images, 0.5, 0.2, 4, seed=-1, stream=0)
    with pytest.raises(ValueError, match="random_crop_flip: padding must be an integer"):
        ops.random_crop_flip(images, 0.5, 0.2, -2, seed=1, stream=0)
    with pytest.raises(ValueError, match=r"random_crop_flip_params: flip_probability must be "
                                         r"in \[0, 1\], got 1.5"):
        ops.random_crop_flip_params(3, 4, seed=1, stream=0, flip_probability=1.5)


def test_kernel_devices_take_float32_outputs_and_batches_the_grid_holds(rng):
    cupycnn.use("sim")
    with pytest.raises(ValueError, match=r"normalize: dtype must be float32 or bf16 \(uint16\) "
                                         r"on the sim device, got float64"):
        ops.normalize(_images(rng, (1, 2, 2, 1)), 0.5, 0.2, dtype=np.float64)
    with pytest.raises(ValueError, match="normalize: batches of at most 65535 images on the "
                                         "sim device .* got 65536"):
        ops.normalize(np.zeros((65536, 1, 1, 1), np.uint8), 0.5, 0.2)
    empty = ops.affine_warp(np.zeros((0, 4, 5, 3), np.uint8), 0.5, 0.2, AffineRanges(), seed=1,
                            stream=0)
    assert empty.shape == (0, 3, 4, 5)

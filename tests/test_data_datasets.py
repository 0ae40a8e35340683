"""The dataset interface, in-memory datasets, views, the validation split, Digits and
Synthetic."""
import numpy as np
import pytest

from cupycnn.data import ArrayDataset, Digits, Subset, Synthetic, train_val_split
from cupycnn.data.synthetic import class_patterns


def _dataset(rng, n=60, counts=None, shape=(5, 7, 3)):
    labels = (np.repeat(np.arange(len(counts)), counts) if counts is not None
              else rng.integers(0, 4, n))
    labels = rng.permutation(labels)
    images = rng.integers(0, 256, (len(labels), *shape), dtype=np.uint8)
    return ArrayDataset(images, labels, classes=[f"c{k}" for k in range(labels.max() + 1)])


def test_array_dataset_interface(rng):
    images = rng.integers(0, 256, (6, 4, 3), dtype=np.uint8)      # [N, H, W]: one channel
    ds = ArrayDataset(images, [0, 1, 2, 0, 1, 2])
    assert len(ds) == 6 and ds.classes == ["0", "1", "2"]
    assert ds.images.shape == (6, 4, 3, 1) and ds.labels.dtype == np.int64
    image, label = ds[-1]
    np.testing.assert_array_equal(image[..., 0], images[5])
    assert label == 2 and isinstance(label, int)
    assert ds.storage()[0] is ds.images and ds.storage()[2] is None
    assert ds.class_counts().tolist() == [2, 2, 2]
    assert repr(ds) == "ArrayDataset(6 images 4x3x1, 3 classes)"
    with pytest.raises(IndexError, match="index 6 out of range for 6 examples"):
        ds[6]


def test_array_dataset_checks_its_arrays(rng):
    with pytest.raises(ValueError, match=r"ArrayDataset: images must have shape "
                                         r"\(N, H, W, C\), got \(2, 3\)"):
        ArrayDataset(np.zeros((2, 3), np.uint8), [0, 1])
    with pytest.raises(ValueError, match=r"ArrayDataset: images must be uint8 \(0..255\) or "
                                         r"float \(0..1\), got int32"):
        ArrayDataset(np.zeros((2, 3, 3, 1), np.int32), [0, 1])
    with pytest.raises(ValueError, match=r"ArrayDataset: labels must have shape \(N=2,\), "
                                         r"got \(3,\)"):
        ArrayDataset(np.zeros((2, 3, 3, 1), np.uint8), [0, 1, 1])
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\) for 2 classes"):
        ArrayDataset(np.zeros((2, 3, 3, 1), np.uint8), [0, 2], classes=["a", "b"])


def test_subset_is_a_view(rng):
    ds = _dataset(rng)
    sub = Subset(ds, [5, 2, 9])
    inner = Subset(sub, [2, 0])                  # a view of a view: positions 9, 5
    images, labels, index = inner.storage()
    assert images is ds.images and labels is ds.labels         # no copy of the images
    assert index.tolist() == [9, 5] and len(inner) == 2
    np.testing.assert_array_equal(inner[0][0], ds.images[9])
    np.testing.assert_array_equal(inner.images, ds.images[[9, 5]])
    assert inner.labels.tolist() == ds.labels[[9, 5]].tolist()
    assert inner.classes == ds.classes
    with pytest.raises(IndexError, match=r"indices must lie in \[0, 60\)"):
        Subset(ds, [60])


@pytest.mark.parametrize("counts, fraction", [((30, 20, 10, 7), 0.2), ((5, 50, 1, 12), 0.3),
                                              ((40, 40), 0.5), ((3, 4, 5), 0.25)])
def test_stratified_split(rng, counts, fraction):
    ds = _dataset(rng, counts=counts)
    seed = int(rng.integers(1 << 30))
    train, val = train_val_split(ds, fraction, seed)
    n = sum(counts)
    # disjoint, together everything, each in dataset order, the exact total
    assert set(train.indices).isdisjoint(val.indices)
    assert sorted([*train.indices, *val.indices]) == list(range(n))
    assert (np.diff(train.indices) > 0).all() and (np.diff(val.indices) > 0).all()
    assert len(val) == round(fraction * n)
    # stratified: every class gives its share to within one example
    got = np.bincount(val.labels, minlength=len(counts))
    assert (np.abs(got - np.array(counts) * len(val) / n) < 1).all(), (got, counts)
    assert (train.class_counts() + val.class_counts()).tolist() == list(counts)
    # views, repeatable from the seed, different for another seed
    assert train.storage()[0] is ds.images and val.storage()[0] is ds.images
    again = train_val_split(ds, fraction, seed)[1]
    assert again.indices.tolist() == val.indices.tolist()
    others = {tuple(train_val_split(ds, fraction, seed + k)[1].indices) for k in range(1, 4)}
    assert others != {tuple(val.indices)}


def test_unstratified_split_and_bad_fractions(rng):
    ds = _dataset(rng, n=50)
    train, val = train_val_split(ds, 0.3, seed=7, stratified=False)
    assert len(val) == 15 and len(train) == 35
    assert sorted([*train.indices, *val.indices]) == list(range(50))
    for bad in (0, 1, -0.1, 1.5):
        with pytest.raises(ValueError, match="train_val_split: val_fraction must lie strictly "
                                             "between 0 and 1"):
            train_val_split(ds, bad, seed=0)
    with pytest.raises(ValueError, match="leaves 0 for validation"):
        train_val_split(ds, 0.001, seed=0)


def test_digits_are_the_real_scikit_learn_digits_split_80_20():
    from sklearn.datasets import load_digits
    source = load_digits()
    train, test = Digits(train=True), Digits(train=False)
    assert (len(train), len(test)) == (1438, 359)
    assert train.images.shape == (1438, 8, 8, 1) and train.images.dtype == np.uint8
    assert train.classes == [str(d) for d in range(10)]
    assert set(train.indices).isdisjoint(test.indices)
    assert sorted([*train.indices, *test.indices]) == list(range(1797))
    for part in (train, test):        # pixels 0..16 scaled to 0..255, labels as given
        np.testing.assert_array_equal(part.images[..., 0],
                                      np.rint(source.images[part.indices] * 255 / 16))
        np.testing.assert_array_equal(part.labels, source.target[part.indices])
    assert train.images.max() == 255 and test.images.min() == 0
    overall = np.bincount(source.target) / 1797
    assert np.abs(np.bincount(test.labels) / 359 - overall).max() < 1 / 359 * 1.01
    assert Digits(train=False, seed=0).indices.tolist() == test.indices.tolist()
    assert Digits(train=False, seed=1).indices.tolist() != test.indices.tolist()


@pytest.mark.parametrize("shape, expected", [((5, 7, 2), (5, 7, 2)), ((8, 8), (8, 8, 1)),
                                             ((32, 32, 3), (32, 32, 3)), ((1, 1, 1), (1, 1, 1))])
def test_synthetic_any_shape_deterministic_balanced(shape, expected):
    ds = Synthetic(53, shape=shape, num_classes=5, seed=3)
    assert ds.images.shape == (53, *expected) and ds.images.dtype == np.uint8
    assert ds.classes == [f"class_{k}" for k in range(5)]
    assert sorted(np.bincount(ds.labels).tolist()) == [10, 10, 11, 11, 11]
    same = Synthetic(53, shape=shape, num_classes=5, seed=3)
    np.testing.assert_array_equal(same.images, ds.images)
    np.testing.assert_array_equal(same.labels, ds.labels)
    other = Synthetic(53, shape=shape, num_classes=5, seed=4)
    assert not np.array_equal(other.images, ds.images)
    assert ds.images.std() > 20                     # patterns and noise, not a constant


def test_synthetic_is_learnable_from_one_seed_to_another():
    # Nearest class mean, fitted on seed 0, tested on seed 1: far above chance (10%) because
    # the classes have their own patterns; with the labels shuffled it is chance.
    train = Synthetic(500, shape=(8, 8, 1), seed=0)
    test = Synthetic(300, shape=(8, 8, 1), seed=1)
    x, xt = train.images.reshape(500, -1) / 255, test.images.reshape(300, -1) / 255

    def accuracy(labels):
        means = np.stack([x[labels == k].mean(0) for k in range(10)])
        guess = np.argmin(((xt[:, None] - means[None]) ** 2).sum(-1), axis=1)
        return (guess == test.labels).mean()
    assert accuracy(train.labels) > 0.9
    assert accuracy(np.random.default_rng(0).permutation(train.labels)) < 0.3


def test_synthetic_similarity_shrinks_the_class_differences():
    # similarity s: pattern_c = (1 - s) own_c + s shared, so every difference between two
    # classes' patterns is (1 - s) times the one at s = 0, and s = 0 is the task unchanged;
    # the nearest class mean of test_synthetic_is_learnable... drops with it.
    shape = (8, 8, 3)
    own = class_patterns(shape, 10)
    for s in (0.5, 0.9):
        blended = class_patterns(shape, 10, similarity=s)
        np.testing.assert_allclose(blended[1:] - blended[:-1], (1 - s) * (own[1:] - own[:-1]),
                                   atol=1e-6)
        assert not np.allclose(blended, (1 - s) * own)          # a shared part, not a scaling
    np.testing.assert_array_equal(Synthetic(20, seed=5, similarity=0.0).images,
                                  Synthetic(20, seed=5).images)

    def nearest_mean_accuracy(**task):
        train = Synthetic(500, shape=(8, 8, 1), seed=0, **task)
        test = Synthetic(300, shape=(8, 8, 1), seed=1, **task)
        x, xt = train.images.reshape(500, -1) / 255, test.images.reshape(300, -1) / 255
        means = np.stack([x[train.labels == k].mean(0) for k in range(10)])
        guess = np.argmin(((xt[:, None] - means[None]) ** 2).sum(-1), axis=1)
        return (guess == test.labels).mean()
    easy, hard = nearest_mean_accuracy(), nearest_mean_accuracy(similarity=0.8, noise=0.4)
    assert easy > 0.9 and hard < easy - 0.2


def test_synthetic_checks_its_arguments():
    with pytest.raises(ValueError, match=r"Synthetic: shape must be \(H, W, C\) or \(H, W\)"):
        Synthetic(4, shape=(0, 3, 3))
    with pytest.raises(ValueError, match="num_classes at least 1"):
        Synthetic(4, num_classes=0)
    with pytest.raises(ValueError, match=r"similarity must be in \[0, 1\)"):
        Synthetic(4, similarity=1.0)
    with pytest.raises(ValueError, match="noise at least 0"):
        Synthetic(4, noise=-0.1)

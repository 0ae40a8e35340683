"""Sharded and tabular sources: tar shards (WebDataset's format, ours and hand-made), TFRecord
files of tf.train.Example (checked against protobuf's own encoder), CSV pixel files (every
header shape), each against the whole-array decode of the same images; sharding over ranks and
workers (every sample once per epoch), seeded shuffling, truncated and corrupt files."""
import io
import subprocess
import sys
import tarfile

import numpy as np
import pytest
from PIL import Image

from cupycnn.data import (CSVImages, Decode, ImageFolder, Loader, ResizeCenterCrop,
                          ShardError, TarShards, TFRecordDataset, make_shards, write_shards,
                          write_tfrecords)
from cupycnn.data import tfrecord as T
from cupycnn.data.shards import read_tar_samples
from test_data_folder import photo, put


def _png(i):
    """An 8 x 8 PNG whose first pixel spells i (red i % 256, green i // 256)."""
    pixels = np.full((8, 8, 3), 100, np.uint8)
    pixels[0, 0, 0], pixels[0, 0, 1] = i % 256, i // 256
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG")
    return buffer.getvalue()


def _ids(images):
    return (images[:, 0, 0, 0].astype(int) + 256 * images[:, 0, 0, 1].astype(int)).tolist()


@pytest.fixture(scope="module")
def numbered(tmp_path_factory):
    """37 numbered samples in 7 shards of up to 6 (the last one short)."""
    out = tmp_path_factory.mktemp("numbered")
    write_shards(((f"{i:04d}", _png(i), "png", i % 5) for i in range(37)), out,
                 classes=list("abcde"), shard_size=6)
    return out


@pytest.fixture
def photos(tmp_path):
    root = tmp_path / "photos"
    for k, name in enumerate(["china.jpg", "flower.jpg", "rocket.jpg", "chelsea.png",
                              "coffee.png", "camera.png"]):
        put(root, f"class{k % 3}/{name}", name)
    return root


# ---------------------------------------------------------------------------- tar shards

def test_shards_of_a_folder_give_the_pixels_of_the_whole_array_decode(photos, tmp_path):
    whole = ImageFolder(photos, size=40, crop=True)
    paths = make_shards(photos, tmp_path / "shards", shard_size=4, seed=3)
    assert [p.name for p in paths] == ["shard-000000.tar", "shard-000001.tar"]
    ds = TarShards(tmp_path / "shards", ResizeCenterCrop(None, 40, downscale=False))
    assert ds.classes == whole.classes and len(ds) == 6 and ds.counts.tolist() == [4, 2]
    loader = Loader(ds, 4, shuffle=False, num_workers=2, pad=False)
    images = np.concatenate([x for x, _ in loader])
    labels = np.concatenate([y for _, y in loader])
    loader.close()
    # Written shuffled (seed 3): each sample's key is its index in the folder's order. With
    # shuffle=False, worker 0 reads shard 0 (one batch of 4), worker 1 shard 1 (a batch of 2),
    # and the loader takes them in turn: file order.
    keys = [int(name.rpartition(":")[2].split(".")[0]) for _, _, name in ds.samples()]
    assert sorted(keys) == list(range(6)) and keys != list(range(6))
    np.testing.assert_array_equal(images, whole.images[keys])
    np.testing.assert_array_equal(labels, whole.labels[keys])


def test_hand_made_webdataset_tars_read_without_an_index(tmp_path):
    # What `tar` or the webdataset package writes: keys with folders, members in any order
    # within a sample, extra members ignored, no index.json.
    path = tmp_path / "hand" / "part-0.tar"
    path.parent.mkdir()
    with tarfile.open(path, "w") as tar:
        for i in range(3):
            for name, data in ((f"train/{i:03d}.cls", str(i % 2).encode()),
                               (f"train/{i:03d}.png", _png(i)),
                               (f"train/{i:03d}.json", b"{}")):
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    ds = TarShards(path.parent)
    assert len(ds) == 3 and ds.image_shape == (8, 8, 3) and ds.classes == []
    samples = list(ds.samples())
    assert [label for _, label, _ in samples] == [0, 1, 0]
    assert samples[2][2].endswith("part-0.tar:train/002.png")


@pytest.mark.parametrize("world, workers", [(1, 1), (1, 3), (2, 2), (3, 1), (3, 2)])
def test_every_sample_once_per_epoch_across_ranks_and_workers(numbered, world, workers):
    ds = TarShards(numbered, Decode())
    seen = []
    for rank in range(world):
        loader = Loader(ds, 4, shuffle=True, seed=7, rank=rank, world_size=world,
                        num_workers=workers, pad=False)
        loader.set_epoch(2)
        batches = [x for x, _ in loader]
        assert len(batches) == len(loader)
        seen += _ids(np.concatenate(batches))
        loader.close()
    assert sorted(seen) == list(range(37))


def test_training_ranks_take_equal_steps(tmp_path):
    write_shards(((f"{i:04d}", _png(i), "png", 0) for i in range(37)), tmp_path, shard_size=10)
    ds = TarShards(tmp_path, Decode())
    lengths = []
    for rank in range(2):
        loader = Loader(ds, 4, shuffle=True, drop_last=True, rank=rank, world_size=2)
        lengths.append((len(loader), len(list(loader))))
        evaluation = Loader(ds, 4, shuffle=False, rank=rank, world_size=2, pad=False)
        lengths.append((len(evaluation), len(list(evaluation))))
    # Shards of 10, 10, 10, 7: rank 0 reads shards 0 and 2 (20 samples, 5 full batches),
    # rank 1 shards 1 and 3 (17: 4 full batches and one of 1). Training: both take 4 steps;
    # evaluation (pad=False): each serves all of its own.
    assert lengths == [(4, 4), (5, 5), (4, 4), (5, 5)]


@pytest.mark.parametrize("world, workers, batch, drop_last, pad", [
    (1, 0, 4, False, False), (1, 2, 4, False, False), (1, 3, 5, False, False),
    (2, 2, 4, False, False), (3, 2, 3, True, False), (2, 2, 4, False, True)])
def test_positions_name_each_served_sample(numbered, world, workers, batch, drop_last, pad):
    """Loader.positions() is where each example it serves sits in the files (what predict puts
    rows back by): each worker's shards in turn, batches taken round-robin."""
    ds = TarShards(numbered, Decode())
    for rank in range(world):
        loader = Loader(ds, batch, shuffle=False, drop_last=drop_last, pad=pad, rank=rank,
                        world_size=world, num_workers=workers)
        served = _ids(np.concatenate([x for x, _ in loader]))
        loader.close()
        assert loader.positions().tolist() == served
    with pytest.raises(TypeError, match=r"in_order\(\) gives one whose positions are known"):
        Loader(ds, 4, shuffle=True).positions()


def test_shuffling_is_seeded_per_epoch_and_off_means_file_order(numbered):
    ds = TarShards(numbered, Decode(), shuffle_buffer=8)

    def order(epoch, seed=1, shuffle=True, workers=2):
        loader = Loader(ds, 5, shuffle=shuffle, seed=seed, num_workers=workers, pad=False)
        loader.set_epoch(epoch)
        ids = _ids(np.concatenate([x for x, _ in loader]))
        loader.close()
        return ids

    first = order(0)
    assert sorted(first) == list(range(37))
    assert order(0) == first                               # the same seed and epoch
    assert order(1) != first and order(0, seed=2) != first
    assert order(0, shuffle=False, workers=1) == list(range(37))


def test_a_truncated_shard_is_an_error_naming_it(numbered, tmp_path):
    import shutil
    copy = tmp_path / "cut"
    shutil.copytree(numbered, copy)
    shard = copy / "shard-000002.tar"
    data = shard.read_bytes()
    shard.write_bytes(data[:len(data) // 2 + 100])          # in the middle of a member
    ds = TarShards(copy, Decode())
    loader = Loader(ds, 4, shuffle=False, num_workers=2, pad=False)
    with pytest.raises(ShardError, match=r"the shard .*shard-000002.tar is truncated or corrupt"):
        list(loader)
    loader.close()
    # Cut at a member boundary: tarfile sees an end, the missing end-of-archive blocks do not.
    with tarfile.open(numbered / "shard-000002.tar") as tar:
        members = tar.getmembers()
    shard.write_bytes(data[:members[4].offset])
    with pytest.raises(ShardError, match="truncated or corrupt after 1 samples: ReadError: it "
                                         "ends 1024 bytes short of tar's end-of-archive"):
        list(read_tar_samples(shard, expect=6))
    # A whole tar with fewer samples than the index promises (replaced since).
    write_shards(((f"{i}", _png(i), "png", 0) for i in range(2)), tmp_path / "two")
    shard.write_bytes((tmp_path / "two" / "shard-000000.tar").read_bytes())
    with pytest.raises(ShardError, match="holds 2 samples, its index says 6"):
        list(read_tar_samples(shard, expect=6))
    with pytest.raises(ShardError, match="bad.tar is truncated or corrupt"):
        list(read_tar_samples(_write(tmp_path / "bad.tar", b"not a tar" * 100)))


def _write(path, data):
    path.write_bytes(data)
    return path


def test_a_sample_without_its_label_is_an_error(tmp_path):
    path = tmp_path / "lonely.tar"
    with tarfile.open(path, "w") as tar:
        info = tarfile.TarInfo("000.png")
        data = _png(0)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    with pytest.raises(ShardError, match=r"the sample '000' has png; every sample needs an "
                                         r"image .* and a label \(.cls\)"):
        list(read_tar_samples(path))


def test_make_shards_command(photos, tmp_path):
    out = tmp_path / "cmd"
    run = subprocess.run([sys.executable, "-m", "cupycnn.data", "make-shards", str(photos),
                          str(out), "--shard-size", "5", "--resize", "64"],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "wrote 2 shards and index.json" in run.stdout
    ds = TarShards(out, Decode())
    assert len(ds) == 6
    sizes = sorted({min(Image.open(io.BytesIO(d)).size) for d, _, _ in ds.samples()})
    assert sizes == [64]                                    # re-encoded, short side 64
    bad = subprocess.run([sys.executable, "-m", "cupycnn.data", "make-shards",
                          str(tmp_path / "nowhere"), str(out)], capture_output=True, text=True)
    assert bad.returncode == 2 and "is not a folder" in bad.stderr


# ------------------------------------------------------------------------------- TFRecord

def _example_class():
    """tf.train.Example built by protobuf itself from example.proto's definitions: an
    encoder and decoder independent of ours."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
    f = descriptor_pb2.FileDescriptorProto(name="example_test.proto", package="tft",
                                           syntax="proto3")
    L = descriptor_pb2.FieldDescriptorProto
    for name, kind in (("BytesList", L.TYPE_BYTES), ("FloatList", L.TYPE_FLOAT),
                       ("Int64List", L.TYPE_INT64)):
        m = f.message_type.add(name=name)
        m.field.add(name="value", number=1, type=kind, label=L.LABEL_REPEATED)
    feature = f.message_type.add(name="Feature")
    feature.oneof_decl.add(name="kind")
    for number, (field, name) in enumerate((("bytes_list", "BytesList"),
                                            ("float_list", "FloatList"),
                                            ("int64_list", "Int64List")), start=1):
        feature.field.add(name=field, number=number, type=L.TYPE_MESSAGE,
                          type_name=f".tft.{name}", label=L.LABEL_OPTIONAL, oneof_index=0)
    features = f.message_type.add(name="Features")
    entry = features.nested_type.add(name="FeatureEntry")
    entry.options.map_entry = True
    entry.field.add(name="key", number=1, type=L.TYPE_STRING, label=L.LABEL_OPTIONAL)
    entry.field.add(name="value", number=2, type=L.TYPE_MESSAGE, type_name=".tft.Feature",
                    label=L.LABEL_OPTIONAL)
    features.field.add(name="feature", number=1, type=L.TYPE_MESSAGE,
                       type_name=".tft.Features.FeatureEntry", label=L.LABEL_REPEATED)
    example = f.message_type.add(name="Example")
    example.field.add(name="features", number=1, type=L.TYPE_MESSAGE, type_name=".tft.Features",
                      label=L.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(f)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tft.Example"))


def test_example_wire_format_against_protobuf():
    Example = _example_class()
    e = Example()
    e.features.feature["image"].bytes_list.value.append(b"\xff\xd8jpeg")
    e.features.feature["label"].int64_list.value.extend([3, -2, 2 ** 40])
    e.features.feature["bbox"].float_list.value.extend([0.5, 0.25])
    assert T.parse_example(e.SerializeToString()) == {
        "image": [b"\xff\xd8jpeg"], "label": [3, -2, 2 ** 40], "bbox": [0.5, 0.25]}
    ours = T.make_example({"image": b"abc", "class": 7, "w": [1.5]})
    back = Example.FromString(ours)
    assert back.features.feature["image"].bytes_list.value == [b"abc"]
    assert list(back.features.feature["class"].int64_list.value) == [7]
    assert list(back.features.feature["w"].float_list.value) == [1.5]
    with pytest.raises(ValueError):
        T.parse_example(ours[:-3])


def test_crc32c_and_its_mask():
    # The check value of CRC-32C (RFC 3720, B.4): "123456789" -> 0xE3069283, in C and Python.
    assert T.crc32c(b"123456789") == T._crc32c_python(b"123456789") == 0xE3069283
    assert T._crc32c_fast is not None                       # the crc32c package (a dev dependency)
    data = bytes(range(256)) * 3
    assert T._crc32c_python(data) == T.crc32c(data)
    crc = T.crc32c(b"abc")
    assert T.masked_crc(b"abc") == (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def test_tfrecords_give_the_pixels_of_the_whole_array_decode(photos, tmp_path):
    whole = ImageFolder(photos, size=32, crop=True)
    files = [p for p in sorted(photos.rglob("*")) if p.is_file()]
    labels = {p: whole.classes.index(p.parent.name) for p in files}
    assert files == whole.files
    paths = write_tfrecords(((p.read_bytes(), labels[p]) for p in files), tmp_path / "tfr",
                            shard_size=4, label_key="class")
    assert [p.name for p in paths] == ["data-00000-of-00002.tfrec", "data-00001-of-00002.tfrec"]
    ds = TFRecordDataset(tmp_path / "tfr", ResizeCenterCrop(None, 32, downscale=False),
                         num_classes=3)
    assert (ds.image_key, ds.label_key, len(ds)) == ("image", "class", 6)
    loader = Loader(ds, 3, shuffle=False, pad=False)
    np.testing.assert_array_equal(np.concatenate([x for x, _ in loader]), whole.images)
    assert np.concatenate([y for _, y in loader]).tolist() == whole.labels.tolist()
    # TensorFlow's ImageNet keys and 1-based labels.
    write_tfrecords(((p.read_bytes(), labels[p] + 1) for p in files[:2]), tmp_path / "tf1",
                    image_key="image/encoded", label_key="image/class/label")
    one = TFRecordDataset(tmp_path / "tf1", label_offset=-1)
    assert [label for _, label, _ in one.samples()] == [0, 0]
    assert one.image_key == "image/encoded"


def test_corrupt_and_truncated_tfrecords_are_errors_naming_the_file(tmp_path):
    path = T.write_records(tmp_path / "a.tfrec", [T.make_example({"image": _png(i), "label": i})
                                                  for i in range(3)])
    data = bytearray(path.read_bytes())
    flipped = tmp_path / "flipped.tfrec"
    data[40] ^= 0x10
    flipped.write_bytes(bytes(data))
    with pytest.raises(ShardError, match=r"flipped.tfrec is corrupt: record 0 at byte 0 fails "
                                         r"its CRC-32C check"):
        list(T.read_records(flipped))
    cut = tmp_path / "cut.tfrec"
    cut.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(ShardError, match="cut.tfrec is truncated"):
        TFRecordDataset(cut)
    with pytest.raises(ShardError, match="cut.tfrec is truncated: record 2"):
        list(T.read_records(cut))
    head = bytearray(path.read_bytes())
    head[3] ^= 1                                             # the length's own CRC fails
    (tmp_path / "len.tfrec").write_bytes(bytes(head))
    with pytest.raises(ShardError, match="the length of record 0 at byte 0 fails"):
        TFRecordDataset(tmp_path / "len.tfrec")
    wrong = T.write_records(tmp_path / "w.tfrec", [T.make_example({"pixels": b"x", "y": 1})])
    with pytest.raises(ValueError, match=r"no image feature .* pass image_key="):
        TFRecordDataset(wrong)


# ------------------------------------------------------------------------------------ CSV

def _images(rng, n, shape):
    return rng.integers(0, 256, size=(n, *shape), dtype=np.uint8)


@pytest.mark.parametrize("first_pixel", [0, 1])            # Digit Recognizer / Sign MNIST
def test_csv_with_a_header_either_numbering(tmp_path, rng, first_pixel):
    images, labels = _images(rng, 9, (28, 28)), rng.integers(0, 10, 9)
    names = ",".join(f"pixel{first_pixel + j}" for j in range(784))
    rows = "".join(f"{y}," + ",".join(map(str, x.reshape(-1))) + "\n"
                   for x, y in zip(images, labels))
    (tmp_path / "train.csv").write_text(f"label,{names}\n{rows}", encoding="utf-8")
    ds = CSVImages(tmp_path / "train.csv", chunk_rows=4)
    np.testing.assert_array_equal(ds.images[..., 0], images)
    assert ds.labels.tolist() == labels.tolist() and ds.image_shape == (28, 28, 1)
    assert ds.columns[0] == "label" and ds.has_labels
    # The test file of the same competition: pixels only.
    (tmp_path / "test.csv").write_text(names + "\n" + "".join(
        ",".join(map(str, x.reshape(-1))) + "\n" for x in images), encoding="utf-8")
    test = CSVImages(tmp_path / "test.csv")
    assert not test.has_labels
    np.testing.assert_array_equal(test.images[..., 0], images)


def test_csv_without_header_fer_style_and_rgb(tmp_path, rng):
    images, labels = _images(rng, 5, (6, 6)), rng.integers(0, 3, 5)
    (tmp_path / "plain.csv").write_text("".join(
        f"{y}," + ",".join(map(str, x.reshape(-1))) + "\n" for x, y in zip(images, labels)))
    ds = CSVImages(tmp_path / "plain.csv")
    np.testing.assert_array_equal(ds.images[..., 0], images)
    assert ds.labels.tolist() == labels.tolist()
    (tmp_path / "fer.csv").write_text("emotion,pixels,Usage\n" + "".join(
        f"{y},{' '.join(map(str, x.reshape(-1)))},Training\n" for x, y in zip(images, labels)))
    fer = CSVImages(tmp_path / "fer.csv")
    np.testing.assert_array_equal(fer.images[..., 0], images)
    assert fer.labels.tolist() == labels.tolist()
    rgb = _images(rng, 3, (4, 4, 3))
    (tmp_path / "rgb.csv").write_text("label," + ",".join(f"p{j}" for j in range(48)) + "\n" +
                                      "".join(f"{n}," + ",".join(map(str, x.reshape(-1))) + "\n"
                                              for n, x in zip(["cat", "dog", "cat"], rgb)))
    colour = CSVImages(tmp_path / "rgb.csv")
    np.testing.assert_array_equal(colour.images, rgb)
    assert colour.classes == ["cat", "dog"] and colour.labels.tolist() == [0, 1, 0]


def test_csv_errors_are_one_sentence(tmp_path):
    (tmp_path / "a.csv").write_text("label,p0,p1,p2,p3\n1,0,0,0,300\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"pixel values must be whole numbers in 0..255"):
        CSVImages(tmp_path / "a.csv")
    (tmp_path / "b.csv").write_text("label,p0,p1,p2,p3\n1,0,0,0,3\n2,0,0\n", encoding="utf-8")
    with pytest.raises(ValueError, match="row 3 has 3 values, the first row 5"):
        CSVImages(tmp_path / "b.csv")
    (tmp_path / "c.csv").write_text("label,p0,p1,p2,p3,p4\n1,0,0,0,0,0\n", encoding="utf-8")
    with pytest.raises(ValueError, match="5 pixel values per row make neither a square"):
        CSVImages(tmp_path / "c.csv")


@pytest.mark.parametrize("workers", [0, 2, 3])
def test_an_epoch_resumes_at_any_batch(numbered, workers, tmp_path):
    # Shards: the workers read past the batches already served (nothing decoded) and the
    # round-robin picks up where it stood; the rest of the epoch is what it would have been.
    ds = TarShards(numbered, Decode(), shuffle_buffer=5)
    for rank in range(2):
        loader = Loader(ds, 3, shuffle=True, seed=4, rank=rank, world_size=2,
                        num_workers=workers, pad=False)
        loader.set_epoch(1)
        whole = [_ids(x) for x, _ in loader]
        for start in (1, 3, len(whole) - 1, len(whole)):
            loader.set_epoch(1, start_batch=start)
            assert [_ids(x) for x, _ in loader] == whole[start:], (rank, start)
        loader.close()
    # The same for in-memory and streamed map datasets.
    from cupycnn.data import ArrayDataset, StreamingImageFolder
    images = np.stack([np.asarray(Image.open(io.BytesIO(_png(i)))) for i in range(11)])
    for i in range(11):
        (tmp_path / f"c{i % 3}").mkdir(exist_ok=True)
        (tmp_path / f"c{i % 3}" / f"{i:02d}.png").write_bytes(_png(i))
    for data in (ArrayDataset(images, np.arange(11) % 3), StreamingImageFolder(tmp_path)):
        loader = Loader(data, 2, shuffle=True, seed=1, rank=1, world_size=2,
                        num_workers=workers if hasattr(data, "streaming") else 0)
        loader.set_epoch(5)
        whole = [_ids(x) for x, _ in loader]
        loader.set_epoch(5, start_batch=2)
        assert [_ids(x) for x, _ in loader] == whole[2:]
        loader.close()
    with pytest.raises(ValueError, match=r"start_batch must lie in \[0, 3\]"):
        loader.set_epoch(0, start_batch=4)

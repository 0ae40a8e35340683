"""TFRecord files of tf.train.Example, read (and written) without TensorFlow.

The TFRecord format (tensorflow/core/lib/io/record_writer.cc, documented in TensorFlow's
"TFRecord and tf.train.Example" guide): a file is a sequence of records, each

    uint64  length               little-endian
    uint32  masked_crc32c(length's 8 bytes)
    byte    data[length]
    uint32  masked_crc32c(data)

with masked_crc(c) = ((c >> 15) | (c << 17)) + 0xa282ead8 (mod 2^32), CRC-32C being the
Castagnoli polynomial. Both checksums are verified: a truncated file or a flipped bit is a
ShardError naming the file and the record. The CRC runs in C with the `crc32c` package where it
is installed, in NumPy-free pure Python otherwise (about 100x slower: fine for tests and small
sets, too slow for ImageNet; `pip install crc32c`).

Each record's data is a tf.train.Example protocol buffer (tensorflow/core/example/
example.proto and feature.proto):

    Example   { Features features = 1; }
    Features  { map<string, Feature> feature = 1; }     (entries: key = 1, value = 2)
    Feature   { oneof kind { BytesList bytes_list = 1; FloatList float_list = 2;
                             Int64List int64_list = 3; } }
    BytesList { repeated bytes value = 1; }  FloatList { repeated float value = 1 [packed]; }
    Int64List { repeated int64 value = 1 [packed]; }

decoded here by a small reader of the protobuf wire format (varints, length-delimited fields,
packed and unpacked repeated scalars). Kaggle ships image sets this way with the keys
`image` (JPEG bytes) and `class`, `label` or `target` (int64); TensorFlow's ImageNet scripts
use `image/encoded` and `image/class/label` (1-based: label_offset=-1). The keys are found
among those names unless given.
"""
import os
import struct
from pathlib import Path

import numpy as np

from .shards import ShardedDataset, not_regular_files, open_shard, writing
from .workers import ShardError

IMAGE_KEYS = ("image", "image/encoded", "image_raw", "img", "jpeg")
LABEL_KEYS = ("label", "class", "target", "image/class/label", "labels", "category")
MAX_RECORD_BYTES = 256 * 2 ** 20
_MASK_DELTA = 0xA282EAD8

# ------------------------------------------------------------------------------ CRC-32C

_TABLE = []
for _n in range(256):
    _c = _n
    for _ in range(8):
        _c = (_c >> 1) ^ 0x82F63B78 if _c & 1 else _c >> 1
    _TABLE.append(_c)


def _crc32c_python(data):
    crc = 0xFFFFFFFF
    table = _TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


try:
    from crc32c import crc32c as _crc32c_fast
except ImportError:              # the pure-Python table (slow, correct)
    _crc32c_fast = None


def crc32c(data):
    """CRC-32C (Castagnoli) of `data`."""
    return _crc32c_fast(data) if _crc32c_fast is not None else _crc32c_python(data)


def masked_crc(data):
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


# ------------------------------------------------------------------------------ records

def read_records(path, check_crc=True):
    """The data of every record in the TFRecord file at `path`, in order; ShardError naming
    the file and the record's number and offset when it is truncated or a checksum fails."""
    path = Path(path)
    with open_shard(path) as f:
        number = 0
        while True:
            offset = f.tell()
            head = f.read(12)
            if not head:
                return
            if len(head) < 12:
                raise ShardError(f"the TFRecord file {path} is truncated: record {number} at "
                                 f"byte {offset} has {len(head)} of its 12 header bytes")
            length, length_crc = struct.unpack("<QI", head)
            if check_crc and masked_crc(head[:8]) != length_crc:
                raise ShardError(f"the TFRecord file {path} is corrupt: the length of record "
                                 f"{number} at byte {offset} fails its CRC-32C check")
            if length > MAX_RECORD_BYTES:
                raise ShardError(f"the TFRecord file {path}: record {number} claims {length} "
                                 f"bytes, over the limit of {MAX_RECORD_BYTES}")
            data = f.read(length)
            tail = f.read(4)
            if len(data) < length or len(tail) < 4:
                raise ShardError(f"the TFRecord file {path} is truncated: record {number} at "
                                 f"byte {offset} needs {length + 16} bytes, the file ends "
                                 f"after {len(data) + len(tail) + 12}")
            if check_crc and masked_crc(data) != struct.unpack("<I", tail)[0]:
                raise ShardError(f"the TFRecord file {path} is corrupt: record {number} at "
                                 f"byte {offset} fails its CRC-32C check")
            yield data
            number += 1


def count_records(path):
    """Records in a TFRecord file, from their headers (length CRCs checked, data skipped)."""
    path = Path(path)
    count = 0
    with open_shard(path) as f:
        size = os.fstat(f.fileno()).st_size
        offset = 0
        while offset < size:
            head = f.read(12)
            if len(head) < 12:
                raise ShardError(f"the TFRecord file {path} is truncated: record {count} at "
                                 f"byte {offset} has {len(head)} of its 12 header bytes")
            length, length_crc = struct.unpack("<QI", head)
            if masked_crc(head[:8]) != length_crc:
                raise ShardError(f"the TFRecord file {path} is corrupt: the length of record "
                                 f"{count} at byte {offset} fails its CRC-32C check")
            offset += 16 + length
            if offset > size:
                raise ShardError(f"the TFRecord file {path} is truncated: record {count} "
                                 f"needs {length + 16} bytes, the file ends before")
            f.seek(offset)
            count += 1
    return count


def write_records(path, records):
    """Write the byte strings `records` as a TFRecord file (atomically)."""
    from .. import atomic
    path = Path(path)
    with atomic.replace(path, what="TFRecord file") as partial, open(partial, "wb") as f:
        for data in records:
            head = struct.pack("<Q", len(data))
            f.write(head + struct.pack("<I", masked_crc(head)) + data
                    + struct.pack("<I", masked_crc(data)))
    return path


# ------------------------------------------------------------- protobuf: tf.train.Example

def _varint(buf, pos):
    result = shift = 0
    while True:
        if pos >= len(buf):
            raise ValueError("a varint runs past the end of the message")
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift >= 70:
            raise ValueError("a varint is longer than 10 bytes")


def _fields(buf):
    """(field number, wire type, value) of a message: an int for varints and fixed, a
    memoryview for length-delimited fields."""
    pos, end = 0, len(buf)
    while pos < end:
        tag, pos = _varint(buf, pos)
        number, wire = tag >> 3, tag & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos:pos + 8], pos + 8
        elif wire == 2:
            size, pos = _varint(buf, pos)
            if pos + size > end:
                raise ValueError("a field runs past the end of the message")
            value, pos = buf[pos:pos + size], pos + size
        elif wire == 5:
            value, pos = buf[pos:pos + 4], pos + 4
        else:
            raise ValueError(f"wire type {wire} is not used by tf.train.Example")
        if pos > end:
            raise ValueError("a field runs past the end of the message")
        yield number, wire, value


def _signed64(v):
    return v - (1 << 64) if v >= 1 << 63 else v


def _feature(buf):
    """A Feature message -> a list of bytes, floats or ints."""
    for number, wire, value in _fields(buf):
        if wire != 2:
            continue
        if number == 1:                                            # BytesList
            return [bytes(v) for n, w, v in _fields(value) if n == 1 and w == 2]
        if number == 2:                                            # FloatList
            out = []
            for n, w, v in _fields(value):
                if n == 1 and w == 2:
                    out += list(np.frombuffer(bytes(v), dtype="<f4").astype(float))
                elif n == 1 and w == 5:
                    out.append(struct.unpack("<f", bytes(v))[0])
            return out
        if number == 3:                                            # Int64List
            out = []
            for n, w, v in _fields(value):
                if n == 1 and w == 2:
                    p, raw = 0, bytes(v)
                    while p < len(raw):
                        x, p = _varint(raw, p)
                        out.append(_signed64(x))
                elif n == 1 and w == 0:
                    out.append(_signed64(v))
            return out
    return []


def parse_example(data):
    """A serialized tf.train.Example -> {feature name: list of bytes, floats or ints}.
    ValueError when it is not a well-formed Example."""
    buf = memoryview(data)
    features = {}
    for number, wire, value in _fields(buf):
        if number != 1 or wire != 2:
            continue
        for n, w, entry in _fields(value):
            if n != 1 or w != 2:
                continue
            key, feature = None, memoryview(b"")
            for en, ew, ev in _fields(entry):
                if en == 1 and ew == 2:
                    key = bytes(ev).decode("utf-8", "replace")
                elif en == 2 and ew == 2:
                    feature = ev
            if key is not None:
                features[key] = _feature(feature)
    return features


def _len_field(number, payload):
    return _key(number, 2) + _encode_varint(len(payload)) + payload


def _key(number, wire):
    return _encode_varint((number << 3) | wire)


def _encode_varint(v):
    out = bytearray()
    v &= (1 << 64) - 1
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def make_example(features):
    """Serialize {name: bytes | int | float | list of one kind} as a tf.train.Example (ints
    and floats packed, as TensorFlow writes them)."""
    entries = b""
    for name in sorted(features):
        value = features[name]
        values = value if isinstance(value, (list, tuple)) else [value]
        if all(isinstance(v, (bytes, bytearray)) for v in values):
            inner = _len_field(1, b"".join(_len_field(1, bytes(v)) for v in values))
        elif all(isinstance(v, (int, np.integer)) for v in values):
            packed = b"".join(_encode_varint(int(v)) for v in values)
            inner = _len_field(3, _len_field(1, packed))
        else:
            packed = np.asarray(values, dtype="<f4").tobytes()
            inner = _len_field(2, _len_field(1, packed))
        entry = _len_field(1, name.encode("utf-8")) + _len_field(2, inner)
        entries += _len_field(1, entry)
    return _len_field(1, entries)


# ------------------------------------------------------------------------------ dataset

class TFRecordDataset(ShardedDataset):
    """Images and labels from TFRecord files of tf.train.Example, streamed shard by shard
    (each file a shard: ranks and workers read their own, as TarShards; see
    cupycnn.data.shards for epochs and shuffling).

    source: a folder (every *.tfrec / *.tfrecord / *.tfrecords / *-of-* file in it, sorted), a
    file, or a list of files. image_key, label_key: the feature names (default: the first of
    IMAGE_KEYS / LABEL_KEYS found in the first record). label_offset is added to every label
    (-1 for TensorFlow's 1-based ImageNet labels). classes: the class names (default "0".."K-1"
    with K given by num_classes, else empty)."""

    def __init__(self, source, transform=None, image_key=None, label_key=None, label_offset=0,
                 classes=None, num_classes=None, shuffle_buffer=None, check_crc=True):
        self._set_transform(transform)
        if shuffle_buffer is not None:
            self.shuffle_buffer = int(shuffle_buffer)
        if isinstance(source, (str, os.PathLike)) and Path(source).is_dir():
            folder = Path(source)
            paths = sorted(p for p in folder.iterdir() if p.is_file() and (
                p.suffix.lower() in (".tfrec", ".tfrecord", ".tfrecords") or "-of-" in p.name))
            if not paths:
                raise FileNotFoundError(f"TFRecordDataset: no .tfrec/.tfrecord files in "
                                        f"{folder}")
        else:
            paths = [Path(p) for p in ([source] if isinstance(source, (str, os.PathLike))
                                       else source)]
            missing = not_regular_files(paths)
            if missing:
                raise FileNotFoundError(f"TFRecordDataset: cannot read {missing[0]}")
        self.shards, self.check_crc = paths, bool(check_crc)
        self._set_counts([count_records(p) for p in paths])
        self.label_offset = int(label_offset)
        if classes is None and num_classes is not None:
            classes = [str(k) for k in range(int(num_classes))]
        self.classes = list(classes) if classes is not None else []
        self.image_key, self.label_key = image_key, label_key
        if image_key is None or label_key is None:
            first = next((k for k, n in enumerate(self.counts) if n), None)
            if first is None:
                raise ValueError(f"TFRecordDataset: the files in {source} hold no records")
            features = parse_example(next(read_records(paths[first], self.check_crc)))
            self.image_key = image_key or self._find(features, IMAGE_KEYS, "image", paths[0])
            self.label_key = label_key or self._find(features, LABEL_KEYS, "label", paths[0])

    @staticmethod
    def _find(features, names, what, path):
        for name in names:
            if name in features:
                return name
        raise ValueError(f"TFRecordDataset: {path}: no {what} feature among {list(names)}; "
                         f"its Examples have {sorted(features)}: pass {what}_key=")

    def read_shard(self, k):
        path = self.shards[k]
        for number, data in enumerate(read_records(path, self.check_crc)):
            name = f"{path}:record {number}"
            try:
                features = parse_example(data)
            except ValueError as e:
                raise ShardError(f"the TFRecord file {path}: record {number} is not a "
                                 f"tf.train.Example: {e}") from None
            image = features.get(self.image_key)
            label = features.get(self.label_key)
            if not image or not isinstance(image[0], bytes):
                raise ShardError(f"the TFRecord file {path}: record {number} has no bytes "
                                 f"feature {self.image_key!r} (it has {sorted(features)})")
            if not label or not isinstance(label[0], int):
                raise ShardError(f"the TFRecord file {path}: record {number} has no int64 "
                                 f"feature {self.label_key!r} (it has {sorted(features)})")
            yield image[0], int(label[0]) + self.label_offset, name


def write_tfrecords(samples, out, shard_size=1000, prefix="data", image_key="image",
                    label_key="label"):
    """Write (encoded image bytes, label) samples as TFRecord files of tf.train.Example under
    `out` (`{prefix}-00000-of-00003.tfrec`, ...). Returns the paths. A failure to write is a
    WriteError in one sentence."""
    with writing("TFRecord files in", out):
        return _write_tfrecords(samples, out, shard_size, prefix, image_key, label_key)


def _write_tfrecords(samples, out, shard_size, prefix, image_key, label_key):
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    chunks, chunk = [], []
    for data, label in samples:
        chunk.append(make_example({image_key: bytes(data), label_key: int(label)}))
        if len(chunk) == shard_size:
            chunks.append(chunk)
            chunk = []
    if chunk:
        chunks.append(chunk)
    return [write_records(out / f"{prefix}-{i:05d}-of-{len(chunks):05d}.tfrec", c)
            for i, c in enumerate(chunks)]

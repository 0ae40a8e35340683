"""Sharded datasets: samples stored in a few hundred large files read front to back (tar
shards in WebDataset's format here; TFRecord files in cupycnn.data.tfrecord), so that reading
is sequential however large the dataset, and ranks and workers each read their own files.

WebDataset's format (https://github.com/webdataset/webdataset): a shard is a POSIX tar file;
a sample is the consecutive members that share a key, the member's name up to the first dot
of its last path component: `000000123.jpg` (the encoded image: .jpg, .jpeg or .png) and
`000000123.cls` (the label, a decimal integer in ASCII). Nothing else is needed, so shards made
by the `webdataset` package (or `tar`) read here and ours read there. `write_shards` adds an
`index.json` beside the shards (format "cupycnn.shards/1": the class names and each shard's
file name and number of samples), which lets a reader plan epochs without opening the shards
and check that none was cut short; without it the tar headers are counted at start.

Epochs (`plan`): rank r of R reads shards r, r + R, r + 2R, ... (always the same ones, so
every epoch has the same length on every rank); its worker w of W reads every W-th of those.
Each epoch a worker visits its shards in an order drawn from default_rng([seed, epoch, rank,
w]) and passes the samples through a shuffle buffer of `shuffle_buffer` samples (WebDataset's
shuffle: fill the buffer, then emit a random one and put the next sample in its place), so
the order depends on (seed, epoch, rank, worker) only, and a run resumes exactly from an
epoch. With shuffle=False the shards and samples come in file order. Batches are made within
a worker; the Loader takes them round-robin over workers. For training (pad=True) every rank
stops after the same number of batches, the fewest any rank has, so the gradient all-reduce
stays in step; for evaluation (pad=False) every sample comes once.

    write_shards(samples, "shards/train", classes=classes)     # (key, bytes, ext, label)
    make_shards("photos/train", "shards/train")               # a class-folder tree
    ds = TarShards("shards/train", RandomResizedCrop(224))
    cupycnn data make-shards photos/train shards/train --shard-size 1000
"""
import contextlib
import io
import json
import os
import stat
import sys
import tarfile
from pathlib import Path

import numpy as np

from .decode import Decode
from .folder import open_regular
from .stream import StreamingDataset, read_file
from .workers import ShardError

INDEX = "index.json"
INDEX_FORMAT = "cupycnn.shards/1"
IMAGE_EXTS = ("jpg", "jpeg", "png")
LABEL_EXTS = ("cls",)
MAX_MEMBER_BYTES = 256 * 2 ** 20
DEFAULT_SHUFFLE_BUFFER = 512


class ShardedDataset(StreamingDataset):
    """Base of datasets read shard by shard. Subclasses set `shards` (paths), `counts`
    (samples per shard), `classes`, `transform`, and implement read_shard(k) -> iterator of
    (encoded bytes, label, name)."""

    shuffle_buffer = DEFAULT_SHUFFLE_BUFFER

    def _set_counts(self, counts):
        self.counts = np.asarray(counts, dtype=np.int64)
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64)

    def __len__(self):
        return int(self.counts.sum())

    def read(self, i):
        raise TypeError(f"{type(self).__name__} is read shard by shard, not by index: iterate "
                        f"a Loader over it, or ds.samples()")

    def __getitem__(self, i):
        self.read(i)

    @property
    def labels(self):
        raise TypeError(f"{type(self).__name__} has no label array; its labels are read with "
                        f"its samples")

    def first_example(self):
        return next(iter(self.read_shard(0)))

    def samples(self):
        """Every (encoded bytes, label, name), shard after shard, in file order."""
        for k in range(len(self.shards)):
            yield from self.read_shard(k)

    # ------------------------------------------------------------------ epochs
    def rank_shards(self, rank, world_size):
        if len(self.shards) < world_size:
            raise ValueError(f"{type(self).__name__}: {len(self.shards)} shards cannot be "
                             f"shared by {world_size} ranks; write at least one shard per rank "
                             f"(more shards than ranks x workers keeps every worker busy)")
        return np.arange(rank, len(self.shards), world_size)

    def _worker_counts(self, rank, world_size, workers):
        mine = self.rank_shards(rank, world_size)
        return [int(self.counts[mine[w::workers]].sum()) for w in range(workers)]

    def _batches(self, rank, world_size, batch_size, drop_last, workers):
        counts = self._worker_counts(rank, world_size, workers)
        return sum(c // batch_size if drop_last else -(-c // batch_size) for c in counts)

    def rank_samples(self, rank, world_size, batch_size, drop_last, pad):
        """(this rank's samples, all samples): the Loader's num_samples and total_size."""
        return int(self.counts[self.rank_shards(rank, world_size)].sum()), len(self)

    def rank_batches(self, rank, world_size, batch_size, drop_last, pad, workers):
        """Batches rank `rank` serves in an epoch: its own with pad=False, else the fewest any
        rank has (equal steps on every rank)."""
        if not pad:
            return self._batches(rank, world_size, batch_size, drop_last, workers)
        return min(self._batches(r, world_size, batch_size, drop_last, workers)
                   for r in range(world_size))

    def plan(self, epoch, rank, world_size, workers, shuffle, seed, batch_size, drop_last):
        """([plan of each worker], batches this rank serves)."""
        mine = self.rank_shards(rank, world_size)
        plans = [dict(shards=mine[w::workers].tolist(), rng=[seed, epoch, rank, w],
                      shuffle=bool(shuffle), buffer=self.shuffle_buffer if shuffle else 0,
                      batch_size=batch_size, drop_last=bool(drop_last), skip=0,
                      samples=int(self.counts[mine[w::workers]].sum()))
                 for w in range(workers)]
        return plans, self._batches(rank, world_size, batch_size, drop_last, workers)

    def _stream(self, plan):
        """(data, label, name, draw) of a worker's plan, through its shuffle buffer."""
        rng = np.random.default_rng(plan["rng"])
        order = list(plan["shards"])
        if plan["shuffle"]:
            order = [order[i] for i in rng.permutation(len(order))]
        size = plan["buffer"]
        buffer = []
        for k in order:
            for position, (data, label, name) in enumerate(self.read_shard(k)):
                sample = (data, label, name, int(self.offsets[k]) + position)
                if len(buffer) < size:
                    buffer.append(sample)
                    continue
                if size == 0:
                    yield sample
                    continue
                j = int(rng.integers(size))
                buffer[j], sample = sample, buffer[j]
                yield sample
        for j in (rng.permutation(len(buffer)) if buffer else ()):
            yield buffer[j]

    def encoded_batches(self, plan, epoch):
        batch, size, skip = [], plan["batch_size"], plan.get("skip", 0)
        for sample in self._stream(plan):
            batch.append(sample)
            if len(batch) == size:
                if skip:                  # resuming: read past it, decode nothing
                    skip -= 1
                else:
                    yield batch
                batch = []
        if batch and not plan["drop_last"] and not skip:
            yield batch

    def __repr__(self):
        return (f"{type(self).__name__}({len(self)} samples in {len(self.shards)} shards, "
                f"{len(self.classes)} classes, {self.transform!r})")


# ------------------------------------------------------------------------- tar shards

def _split_key(name):
    """WebDataset's (key, extension): the extension starts at the first dot of the last
    path component."""
    head, _, last = name.rpartition("/")
    stem, dot, ext = last.partition(".")
    return (f"{head}/{stem}" if head else stem), ext.lower()


def read_tar_samples(path, expect=None):
    """(bytes, label, name) of every sample in the tar shard at `path`, in order. ShardError
    naming the shard (and the member) when it is truncated, corrupt, or a sample lacks its
    image or label; `expect`: the number of samples the index promises."""
    path = Path(path)
    count, key, parts = 0, None, {}
    data_end = 0           # where the last member's data (padded to 512 bytes) ends

    def finish():
        image = next((parts[e] for e in IMAGE_EXTS if e in parts), None)
        label = next((parts[e] for e in LABEL_EXTS if e in parts), None)
        if image is None or label is None:
            raise ShardError(f"the shard {path}: the sample {key!r} has "
                             f"{', '.join(sorted(parts)) or 'no members'}; every sample needs "
                             f"an image (.jpg, .jpeg, .png) and a label (.cls)")
        try:
            value = int(label.decode("ascii").strip())
        except (UnicodeDecodeError, ValueError):
            raise ShardError(f"the shard {path}: the label of {key!r} is {label[:20]!r}, not "
                             f"an integer") from None
        return image[1], value, f"{path}:{key}.{image[0]}"

    f = open_shard(path)
    try:
        with f, tarfile.open(fileobj=f, mode="r|") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                if member.size > MAX_MEMBER_BYTES:
                    raise ShardError(f"the shard {path}: the member {member.name!r} has "
                                     f"{member.size} bytes, over the limit of {MAX_MEMBER_BYTES}")
                k, ext = _split_key(member.name)
                data = tar.extractfile(member).read()
                data_end = member.offset_data + -(-member.size // 512) * 512
                if len(data) != member.size:
                    raise tarfile.ReadError(f"unexpected end of data in {member.name!r}")
                if k != key and key is not None:
                    yield finish()
                    count += 1
                    parts = {}
                key = k
                for e in IMAGE_EXTS:
                    if ext == e:
                        parts[e] = (e, data)
                if ext in LABEL_EXTS:
                    parts[ext] = data
            # tarfile takes a header cut short for the end: a whole tar ends with two zero
            # blocks after its last member, so a file shorter than that was truncated.
            if os.fstat(f.fileno()).st_size < data_end + 1024:
                raise tarfile.ReadError(f"it ends {data_end + 1024 - os.fstat(f.fileno()).st_size}"
                                        f" bytes short of tar's end-of-archive blocks")
            if key is not None:
                yield finish()
                count += 1
    except (tarfile.TarError, EOFError, OSError) as e:
        raise ShardError(f"the shard {path} is truncated or corrupt after {count} samples: "
                         f"{type(e).__name__}: {e}") from None
    if expect is not None and count != expect:
        raise ShardError(f"the shard {path} holds {count} samples, its index says {expect}: "
                         f"it was cut short or replaced; write the shards again")


def open_shard(path):
    """The shard or record file at `path` opened for reading if it is a regular file (a FIFO
    would block an ordinary open forever); ShardError saying what it is otherwise."""
    try:
        return open_regular(path)
    except OSError as e:
        raise ShardError(f"cannot read the shard {path}: {e.strerror or e}") from None


def not_regular_files(paths):
    """The paths that are not regular files, each said as what it is (missing, a folder, a
    FIFO, ...)."""
    from ..safe_hdf5 import kind_of
    said = []
    for p in paths:
        try:
            mode = os.stat(p).st_mode
        except OSError as e:
            said.append(f"{p} ({e.strerror or 'missing'})")
            continue
        if not stat.S_ISREG(mode):
            said.append(f"{p} ({kind_of(mode)}, not a regular file)")
    return said


def count_tar_samples(path):
    """Samples in a tar shard, from its headers (the data is skipped, not read)."""
    keys, last = 0, None
    f = open_shard(path)
    try:
        with f, tarfile.open(fileobj=f, mode="r:") as tar:
            for member in tar:
                if member.isfile():
                    k, _ = _split_key(member.name)
                    if k != last:
                        keys, last = keys + 1, k
    except (tarfile.TarError, EOFError, OSError) as e:
        raise ShardError(f"the shard {path} is truncated or corrupt: {type(e).__name__}: "
                         f"{e}") from None
    return keys


MAX_INDEX_BYTES = 64 * 2 ** 20       # an index of a million shards is about 60 MB
MIN_SAMPLE_BYTES = 1024              # a sample is two tar members: at least their two headers


def read_index(path):
    """The shard index at `path`, checked as data before anything is read from the shards:
    {"format": INDEX_FORMAT, "classes": [str], "shards": [{"file": name in the folder,
    "samples": count}]}. ShardError naming what is wrong."""
    def bad(what):
        return ShardError(f"TarShards: {path} is not a usable shard index: {what}")
    try:
        with open_regular(path) as f:
            data = f.read(MAX_INDEX_BYTES + 1)
    except OSError as e:
        raise ShardError(f"TarShards: cannot read {path}: {e.strerror or e}") from None
    if len(data) > MAX_INDEX_BYTES:
        raise bad(f"over {MAX_INDEX_BYTES} bytes")
    try:
        index = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise bad(f"not JSON ({type(e).__name__}: {str(e)[:80]})") from None
    if not isinstance(index, dict) or index.get("format") != INDEX_FORMAT:
        got = index.get("format") if isinstance(index, dict) else type(index).__name__
        raise ShardError(f"TarShards: {path} is not a cupycnn shard index (format "
                         f"{str(got)[:40]!r}, expected {INDEX_FORMAT!r})")
    classes, shards = index.get("classes", []), index.get("shards")
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise bad("its classes are not a list of names")
    if not isinstance(shards, list) or not shards:
        raise bad("it lists no shards")
    for i, shard in enumerate(shards):
        if not isinstance(shard, dict) or not isinstance(shard.get("file"), str):
            raise bad(f"shard {i} is not {{\"file\": name, \"samples\": count}}")
        name = shard["file"]
        if Path(name).name != name or name.startswith(".") or not name:
            raise ShardError(f"TarShards: {path} names the shard {name[:60]!r}, which is not "
                             f"a file in its folder")
        count = shard.get("samples")
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise bad(f"shard {name!r} has {str(count)[:20]!r} samples, not a count")
    return index


def _check_count(count, path):
    """A count of samples an index declares for a shard must fit in the shard's bytes (it
    plans every epoch: 10**12 would allocate terabytes)."""
    size = os.stat(path).st_size
    if count > size // MIN_SAMPLE_BYTES:
        raise ShardError(f"TarShards: the index says the shard {path} holds {count} samples; "
                         f"its {size} bytes hold at most {size // MIN_SAMPLE_BYTES}")


class TarShards(ShardedDataset):
    """WebDataset-style tar shards (the module's docstring): `source` is a folder with the
    index.json that write_shards makes, a folder of .tar files, or a list of .tar paths.
    transform: a decode transform (default Decode(): all images one size). classes: the
    class names (default: the index's; shards without an index have none unless given).
    shuffle_buffer: samples a worker's shuffle buffer holds (encoded: about 110 kB each for
    ImageNet JPEGs)."""

    def __init__(self, source, transform=None, classes=None, shuffle_buffer=None):
        self._set_transform(transform)
        if shuffle_buffer is not None:
            self.shuffle_buffer = int(shuffle_buffer)
        index = None
        if isinstance(source, (str, os.PathLike)) and Path(source).is_dir():
            folder = Path(source)
            if (folder / INDEX).is_file():
                index = read_index(folder / INDEX)
                paths = [folder / s["file"] for s in index["shards"]]
            else:
                paths = sorted(folder.glob("*.tar"))
        else:
            paths = [Path(p) for p in ([source] if isinstance(source, (str, os.PathLike))
                                       else source)]
        if not paths:
            raise FileNotFoundError(f"TarShards: no .tar shards in {source}")
        missing = not_regular_files(paths)
        if missing:
            raise FileNotFoundError(f"TarShards: cannot read the shard(s) {', '.join(missing[:3])}")
        self.shards = paths
        if index is not None:
            for shard, path in zip(index["shards"], paths):
                _check_count(shard["samples"], path)
            self._set_counts([s["samples"] for s in index["shards"]])
            self._expect = list(self.counts)
            self.classes = list(classes if classes is not None else index.get("classes", []))
        else:
            self._set_counts([count_tar_samples(p) for p in paths])
            self._expect = [None] * len(paths)
            self.classes = list(classes) if classes is not None else []
        self.index = index

    def read_shard(self, k):
        return read_tar_samples(self.shards[k], self._expect[k])


def _tarinfo(name, size):
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, 0o444, 0
    info.uname = info.gname = ""
    return info


def write_shards(samples, out, classes=None, shard_size=1000, prefix="shard"):
    """Write (key, encoded bytes, extension, label) samples to tar shards of `shard_size`
    samples under the folder `out` (`{prefix}-000000.tar`, ...), each written to a temporary
    file and renamed into place, and the index.json (written last: a folder with an index is
    complete). Returns the shard paths. A failure to write (a full disk, a read-only folder) is
    a WriteError in one sentence."""
    with writing("shards in", out):
        return _write_shards(samples, out, classes, shard_size, prefix)


@contextlib.contextmanager
def writing(what, out):
    """OSErrors of the block (not already one sentence) as atomic.WriteError naming `out`."""
    from .. import atomic
    try:
        yield
    except atomic.WriteError:
        raise
    except OSError as e:
        raise atomic.write_error(what, out, e, kept=False) from None


def _write_shards(samples, out, classes, shard_size, prefix):
    from .. import atomic
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    shards, counts = [], []
    tar = file = writing_shard = None

    def close():
        nonlocal tar, file, writing_shard
        if tar is not None:
            tar.close()
            file.close()
            writing_shard.close()      # atomic.replace: fsync, rename into place
            tar = file = writing_shard = None

    try:
        for i, (key, data, ext, label) in enumerate(samples):
            if tar is None:
                shards.append(out / f"{prefix}-{len(shards):06d}.tar")
                counts.append(0)
                writing_shard = contextlib.ExitStack()   # a partial file with the umask's mode
                tmp = writing_shard.enter_context(atomic.replace(shards[-1], what="shard"))
                file = open(tmp, "wb")
                tar = tarfile.open(fileobj=file, mode="w", format=tarfile.USTAR_FORMAT)
            key = str(key)
            if "." in key.rpartition("/")[2] or key.startswith("/") or ".." in key.split("/"):
                raise ValueError(f"write_shards: the key {key!r} must not contain a dot in its "
                                 f"last component, start with / or contain ..")
            ext = ext.lower().lstrip(".")
            if ext not in IMAGE_EXTS:
                raise ValueError(f"write_shards: {key}: the image extension must be one of "
                                 f"{', '.join(IMAGE_EXTS)}, got {ext!r}")
            tar.addfile(_tarinfo(f"{key}.{ext}", len(data)), io.BytesIO(data))
            text = str(int(label)).encode("ascii")
            tar.addfile(_tarinfo(f"{key}.cls", len(text)), io.BytesIO(text))
            counts[-1] += 1
            if counts[-1] == shard_size:
                close()
        close()
    except BaseException:
        if writing_shard is not None:
            file.close()
            writing_shard.__exit__(*sys.exc_info())    # the partial file is removed, not renamed
        raise
    index = {"format": INDEX_FORMAT, "classes": list(classes) if classes is not None else [],
             "shards": [{"file": p.name, "samples": n} for p, n in zip(shards, counts)]}
    with atomic.replace(out / INDEX, what="shard index") as partial:
        with open(partial, "w", encoding="utf-8") as f:
            json.dump(index, f, indent=1)
    return shards


def _reencode(data, name, short_side, quality):
    """JPEG bytes of the image with its short side at most `short_side` (Pillow, bilinear)."""
    from .decode import _pillow, decode
    Image = _pillow()
    pixels = decode(data, name)
    image = Image.fromarray(pixels)
    h, w = pixels.shape[:2]
    if min(h, w) > short_side:
        from .decode import resize_shape
        new_h, new_w = resize_shape(h, w, short_side)
        image = image.resize((new_w, new_h), Image.BILINEAR)
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    return buffer.getvalue()


def make_shards(folder, out, shard_size=1000, seed=0, shuffle=True, resize=None, quality=90,
                progress=None):
    """Convert a class-folder tree (StreamingImageFolder's layout) into tar shards under
    `out`. The samples are shuffled first (seeded: each shard then holds a mix of classes, as
    a shuffle buffer needs); resize=S re-encodes each image as a JPEG with its short side at
    most S (e.g. 256 for ImageNet training, a third of the bytes), otherwise the files are
    stored as they are. progress(done, total) is called as it goes. Returns the shard paths."""
    from .stream import StreamingImageFolder
    ds = StreamingImageFolder(folder, Decode())
    order = np.random.default_rng(seed).permutation(len(ds)) if shuffle else np.arange(len(ds))

    def samples():
        for done, i in enumerate(order):
            path = ds.path(int(i))
            data = read_file(path)
            ext = Path(path).suffix.lower().lstrip(".")
            if resize is not None:
                data, ext = _reencode(data, path, int(resize), quality), "jpg"
            if progress is not None:
                progress(done + 1, len(order))
            yield f"{int(i):09d}", data, ext, int(ds.labels[i])

    return write_shards(samples(), out, classes=ds.classes, shard_size=shard_size)

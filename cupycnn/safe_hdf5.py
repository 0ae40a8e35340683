"""Opening HDF5 files that may be damaged or hostile, so that nothing read from one reaches
outside it.

HDF5 can make a file read other files and allocate far more than it holds:
    EXTERNAL storage   a dataset's bytes are read from any file the dataset names (/etc/passwd)
    VIRTUAL datasets   a dataset is mapped from datasets of other HDF5 files
    soft links         a name resolved as a path when it is read (to another object, or none)
    external links     a name that opens another HDF5 file
    filters            a dataset's bytes pass through a filter, which HDF5 may load as a plugin
    declared shapes    a dataset may declare [10**9] and store nothing: reading it fills the
                       memory with the fill value
Every reader of cupycnn's own HDF5 files (checkpoints, image caches) calls `audit` before it
reads a byte of data. It walks every object of the file and refuses, naming the object: any
link that is not a hard link, any object that is not a group or a dataset, any dataset with
external, virtual or filtered storage, a datatype other than plain numbers (and, where asked,
strings), a dataset that stores fewer bytes than its shape declares, and more objects,
attributes or nesting than a cupycnn file has. What it returns (name -> shape, dtype, bytes)
lets the caller check names, shapes and dtypes against what it expects before reading.

`check_regular_file` refuses what is not a regular file (a FIFO would block the open forever,
a device would read without end) before anything opens the path; `read_header` does so
and then reads a verified file's header (its digests checked): the readers' way in.
"""
import os
import stat

import numpy as np

MAX_OBJECTS = 200_000          # groups + datasets in one file (ResNet-50 + Adam: about 1,000)
MAX_DEPTH = 32                 # group nesting
MAX_ATTRIBUTES = 256           # per object
MAX_ATTRIBUTE_BYTES = 64 << 20  # one attribute's datatype size (a fixed-length string's)
NUMERIC_KINDS = "biuf"         # bool, signed and unsigned integers, floats


def check_regular_file(path, error, what="file"):
    """os.stat of `path` (following symlinks) if it is a regular file; FileNotFoundError when
    there is nothing there, `error` naming what it is (a folder, a FIFO, a device, a symlink
    loop) otherwise."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"no {what} at {path}") from None
    except OSError as e:         # ELOOP (a symlink loop), EACCES, ENAMETOOLONG, ...
        raise error(f"cannot open the {what} {path}: {e.strerror or e}") from None
    if not stat.S_ISREG(info.st_mode):
        raise error(f"{path} is {kind_of(info.st_mode)}, not a regular file; a {what} must be one")
    return info


def kind_of(mode):
    """What a file of st_mode `mode` is, in words ("a FIFO (named pipe)", ...)."""
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISCHR, "a character device"),
                       (stat.S_ISBLK, "a block device")):
        if test(mode):
            return name
    return "not a regular file"


def open_file(path, error, what="file"):
    """h5py.File(path, "r") of a regular file; `error` when it is not one or is not HDF5."""
    import h5py
    check_regular_file(path, error, what)
    try:
        return h5py.File(path, "r")
    except OSError as e:
        raise error(f"{path} is not a readable HDF5 file (truncated or corrupt?): "
                    f"{_first_line(e)}") from None


def _first_line(e):
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


class Entry:
    """A dataset as the file declares it: shape, dtype, nbytes (None for strings)."""

    __slots__ = ("shape", "dtype", "nbytes")

    def __init__(self, shape, dtype, nbytes):
        self.shape, self.dtype, self.nbytes = shape, dtype, nbytes

    def __repr__(self):
        return f"Entry(shape={self.shape}, dtype={self.dtype})"


def audit(f, error, where, strings=False):
    """Walk every object of the open file `f`; return {dataset name: Entry} (names without the
    leading "/"), or raise `error` (with `where` first) naming the first object that is not
    self-contained, plain and fully stored (see the module docstring). With strings=True,
    datasets of variable- or fixed-length strings are allowed (their Entry has nbytes None)."""
    import h5py
    datasets = {}
    seen = set()
    count = [0]

    def refuse(name, reason):
        raise error(f"{where}: {name!r} {reason}; refused before reading anything (a cupycnn "
                    f"file never holds one)")

    def check_attributes(obj, name):
        attrs = obj.attrs
        names = list(attrs)
        if len(names) > MAX_ATTRIBUTES:
            refuse(name, f"has {len(names)} attributes (at most {MAX_ATTRIBUTES})")
        for key in names:
            attr = attrs.get_id(key)
            kind = attr.get_type().get_class()
            size = attr.get_type().get_size()
            if attr.shape != ():
                refuse(name, f"has an attribute {key!r} of shape {attr.shape} (cupycnn writes "
                             f"single values)")
            if kind not in (h5py.h5t.STRING, h5py.h5t.INTEGER, h5py.h5t.FLOAT, h5py.h5t.ENUM):
                refuse(name, f"has an attribute {key!r} of HDF5 type class {kind} (not a "
                             f"number or a string)")
            if size > MAX_ATTRIBUTE_BYTES:
                refuse(name, f"has an attribute {key!r} of {size:,} bytes")

    def walk(group, prefix, depth):
        if depth > MAX_DEPTH:
            refuse(prefix or "/", f"nests groups deeper than {MAX_DEPTH}")
        check_attributes(group, prefix or "/")
        for key in group:
            name = f"{prefix}/{key}" if prefix else key
            count[0] += 1
            if count[0] > MAX_OBJECTS:
                refuse(name, f"is one object too many (at most {MAX_OBJECTS})")
            link = group.get(key, getlink=True)
            if isinstance(link, h5py.SoftLink):
                refuse(name, f"is a soft link (to {link.path!r})")
            if isinstance(link, h5py.ExternalLink):
                refuse(name, f"is an external link (to {link.path!r} in the file "
                             f"{link.filename!r})")
            if not isinstance(link, h5py.HardLink):
                refuse(name, f"is a link of an unknown kind ({type(link).__name__})")
            obj = group[key]
            if obj.id in seen:
                refuse(name, "is a second hard link to an object already seen (a cycle or "
                             "an alias)")
            seen.add(obj.id)
            if isinstance(obj, h5py.Group):
                walk(obj, name, depth + 1)
            elif isinstance(obj, h5py.Dataset):
                check_attributes(obj, name)
                datasets[name] = check_dataset(obj, name)
            else:
                refuse(name, f"is a {type(obj).__name__}, not a group or a dataset")

    def check_dataset(ds, name):
        plist = ds.id.get_create_plist()
        layout = plist.get_layout()
        if layout == h5py.h5d.VIRTUAL or ds.is_virtual:
            refuse(name, "is a virtual dataset (its data would come from other files)")
        if plist.get_external_count():
            files = [plist.get_external(i)[0].decode("utf-8", "replace")
                     for i in range(plist.get_external_count())]
            refuse(name, f"has external storage (its bytes would be read from "
                         f"{', '.join(files)})")
        if layout not in (h5py.h5d.CONTIGUOUS, h5py.h5d.COMPACT, h5py.h5d.CHUNKED):
            refuse(name, f"has an unknown storage layout {layout}")
        if plist.get_nfilters():
            ids = [plist.get_filter(i)[0] for i in range(plist.get_nfilters())]
            refuse(name, f"passes through HDF5 filters {ids} (cupycnn writes none)")
        shape = ds.shape
        if shape is None:
            refuse(name, "has a null dataspace")
        kind = ds.id.get_type().get_class()
        if kind == h5py.h5t.STRING:
            if not strings:
                refuse(name, "holds strings where numbers are expected")
            return Entry(tuple(shape), ds.dtype, None)
        dtype = ds.dtype
        if kind not in (h5py.h5t.INTEGER, h5py.h5t.FLOAT, h5py.h5t.ENUM) or \
                dtype.kind not in NUMERIC_KINDS or dtype.fields is not None or dtype.subdtype:
            refuse(name, f"has the datatype {dtype} (HDF5 type class {kind}); only plain "
                         f"numbers are read")
        nbytes = int(np.prod(shape, dtype=object)) * dtype.itemsize
        stored = ds.id.get_storage_size()
        if stored < nbytes:
            refuse(name, f"declares {tuple(shape)} {dtype} ({nbytes:,} bytes) but stores only "
                         f"{stored:,} bytes")
        return Entry(tuple(shape), dtype, nbytes)

    walk(f, "", 0)
    return datasets


def read(f, name, error, where):
    """The whole dataset `name` of an audited file as a NumPy array; `error` naming it when
    HDF5 cannot read its bytes."""
    try:
        return f[name][()]
    except (OSError, ValueError, TypeError) as e:
        raise error(f"{where}: cannot read {name!r} (the file is damaged): "
                    f"{_first_line(e)}") from None


# ------------------------------------------------------------- verified files (writing)
#
# A verified file (what cupycnn writes: checkpoints, image caches) is an HDF5 file of plain
# numeric datasets after a userblock (a region at the start that HDF5 reserves for the
# application and never reads) holding one line and a JSON document:
#     <magic> <version> <userblock bytes> <JSON bytes> <SHA-256 of the JSON>\n<JSON>\n
# The JSON is {"document": what the writer says about the file (its manifest), "tensors":
# [[dataset, byte offset, bytes, SHA-256], ...], "file_sha256": the digest of every byte after
# the userblock}. A reader checks both digests before HDF5 parses a single byte of the file:
# damage (a flipped bit in HDF5's own structures can send its parser into an endless loop)
# never reaches HDF5, and the table names the dataset a damage falls in.

HEADER_SLACK = 4096
MAX_USERBLOCK = 256 << 20


def _power_of_two(n):
    size = 512
    while size < n:
        size *= 2
    return size


def file_digest(f, start, chunk=8 << 20):
    """SHA-256 of the open binary file `f` from byte `start` to its end."""
    import hashlib
    digest = hashlib.sha256()
    f.seek(start)
    for block in iter(lambda: f.read(chunk), b""):
        digest.update(block)
    return digest.hexdigest()


def write_verified(path, arrays, document, magic, version, digests, attrs=None, prepare=None,
                   text_length=None):
    """Write `arrays` ([(dataset name, C-contiguous array)], contiguous datasets in that order)
    to a new HDF5 file at `path`, after the header holding `document` (JSON data) and the
    tensor table (`digests`: dataset name -> SHA-256 of its bytes). `attrs` become root
    attributes (for a reader's eye), `prepare(f)` runs first (to make groups). Writes to
    `path` itself: callers make it atomic (cupycnn.atomic)."""
    import hashlib
    import json

    import h5py
    if text_length is None:
        text_length = len(json.dumps(document, separators=(",", ":")))
    table = sum(len(name) + 64 + 2 * 20 + 16 for name, _ in arrays)
    userblock = _power_of_two(text_length + table + HEADER_SLACK)
    with h5py.File(path, "w", userblock_size=userblock) as f:
        for key, value in (attrs or {}).items():
            f.attrs[key] = value
        if prepare is not None:
            prepare(f)
        for name, array in arrays:
            f.create_dataset(name, data=array)
        f.flush()
        offsets = {name: f[name].id.get_offset() for name, _ in arrays}
    tensors = [[name, -1 if offsets[name] is None else int(offsets[name]), int(array.nbytes),
                digests[name]] for name, array in arrays]
    with open(path, "r+b") as out:
        header = json.dumps({"document": document, "tensors": tensors,
                             "file_sha256": file_digest(out, userblock)},
                            separators=(",", ":"), allow_nan=False).encode("utf-8")
        first = f"{magic} {version} {userblock} {len(header)} " \
                f"{hashlib.sha256(header).hexdigest()}\n".encode("ascii")
        if len(first) + len(header) + 1 > userblock:      # pragma: no cover - sized above
            raise RuntimeError(f"the header needs {len(first) + len(header) + 1} bytes, "
                               f"{userblock} were reserved")
        out.seek(0)
        out.write(first + header + b"\n")


# ------------------------------------------------------------- verified files (reading)

def read_header(path, magic, version, error, what="file"):
    """read_verified_header of the file at `path` once check_regular_file has passed it: the
    readers' one way in. FileNotFoundError when nothing is there (the caller names what was
    missing); an OSError while reading (EIO, the file removed meanwhile) raised as `error`, a
    class or function of a message that is not itself an OSError."""
    info = check_regular_file(path, error, what)
    try:
        return read_verified_header(path, info, magic, version, error, what)
    except OSError as e:
        raise error(f"cannot read the {what} {path}: {e.strerror or e}") from None


def read_verified_header(path, info, magic, version, error, what="file"):
    """(document, {dataset: offset}, userblock) from the verified header of the regular file
    at `path` (`info` its os.stat), after checking the header's digest and the whole file's;
    None when the file does not start with `magic` (another format, or an older version).
    `error` says what is damaged: the header, or which datasets' bytes, or HDF5's structures;
    a file written by a newer version (a higher `version`) is refused as such."""
    import hashlib
    import json
    where = str(path)
    with open(path, "rb") as f:
        first = f.read(256)
        if not first.startswith(magic.encode() + b" "):
            return None
        line = first.split(b"\n", 1)[0]
        fields = line.decode("ascii", "replace").split(" ")
        try:
            _, found, userblock, length, digest = fields
            found, userblock, length = int(found), int(userblock), int(length)
        except ValueError:
            raise error(f"{where}: the {what} is damaged: its first line {line[:80]!r} is not "
                        f"a cupycnn header") from None
        if found > version:
            raise error(f"{where} was written by a newer cupycnn ({what} version {found}; this "
                        f"one reads up to {version})")
        if userblock > info.st_size and 512 <= userblock <= MAX_USERBLOCK:
            raise error(f"{where}: the {what} is damaged: the file is truncated "
                        f"({info.st_size} bytes, shorter than its header)")
        if found != version or userblock < 512 or userblock & (userblock - 1) or \
                userblock > min(MAX_USERBLOCK, info.st_size) or \
                not 0 < length <= userblock - len(line) - 2:
            raise error(f"{where}: the {what} is damaged: its header line {line[:80]!r} is "
                        f"inconsistent")
        f.seek(len(line) + 1)
        header = f.read(length)
        if hashlib.sha256(header).hexdigest() != digest:
            raise error(f"{where}: the {what} is damaged: its header does not match its "
                        f"SHA-256 digest")
        try:
            header = json.loads(header)
        except RecursionError:
            raise error(f"{where}: the {what}'s header is nested too deeply") from None
        except ValueError as e:
            raise error(f"{where}: the {what} is damaged: its header is not JSON ({e})") \
                from None
        if not (isinstance(header, dict) and set(header) == {"document", "tensors",
                                                             "file_sha256"}
                and isinstance(header["tensors"], list)):
            raise error(f"{where}: the {what} is damaged: its header has the wrong fields")
        tensors = []
        for item in header["tensors"]:
            if not (isinstance(item, list) and len(item) == 4 and isinstance(item[0], str)
                    and all(isinstance(v, int) and not isinstance(v, bool) for v in item[1:3])
                    and isinstance(item[3], str)):
                raise error(f"{where}: the {what} is damaged: its tensor table has the entry "
                            f"{str(item)[:60]}")
            tensors.append(item)
        if file_digest(f, userblock) != header["file_sha256"]:
            raise error(f"{where}: the {what} is damaged: "
                        f"{_locate_damage(f, tensors, info.st_size)}")
    return header["document"], {name: offset for name, offset, _, _ in tensors}, userblock


def _locate_damage(f, tensors, size):
    """Which datasets' bytes no longer match their digests (read straight from the file)."""
    import hashlib
    ends = [offset + nbytes for _, offset, nbytes, _ in tensors if offset >= 0]
    if ends and max(ends) > size:
        return (f"the file is truncated (it ends at byte {size}, before the end of its data "
                f"at {max(ends)})")
    damaged = []
    for name, offset, nbytes, digest in tensors:
        if offset < 0 or nbytes == 0:
            continue
        f.seek(offset)
        if hashlib.sha256(f.read(nbytes)).hexdigest() != digest:
            damaged.append(name)
    if damaged:
        names = ", ".join(damaged[:5]) + (f" and {len(damaged) - 5} more" if len(damaged) > 5
                                          else "")
        return (f"the bytes of {names} do not match {'its' if len(damaged) == 1 else 'their'} "
                f"SHA-256 checksum")
    return ("its bytes do not match their SHA-256 checksum (the damage is in HDF5's "
            "structures, outside every dataset)")


def check_offsets(f, files, offsets, error, where):
    """Every dataset of the audited file `f` must be where the verified header says."""
    for name in files:
        offset = f[name].id.get_offset()
        if offsets.get(name, -2) != (-1 if offset is None else offset):
            raise error(f"{where}: the file was altered: the dataset {name!r} is not where its "
                        f"header says")

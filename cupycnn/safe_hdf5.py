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
a device would read without end) before anything opens the path.
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
        raise error(f"{path} is {_kind(info.st_mode)}, not a regular file; a {what} must be one")
    return info


def _kind(mode):
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

"""How an attacker rewrites a cupycnn checkpoint: edit it with h5py, then `reseal` it (recompute
the digests of its header, as anyone can), so that only the loader's structural checks stand
between the edit and the model. Damage (a flipped bit, a cut) is what is not resealed."""
import hashlib
import json

import h5py


def read_header(path):
    data = open(path, "rb").read()
    line, rest = data.split(b"\n", 1)
    magic, version, userblock, length, digest = line.decode().split(" ")
    assert magic.startswith("cupycnn-")
    return json.loads(rest[:int(length)]), int(userblock)


def reseal(path, version=None, edit=None, magic="cupycnn-checkpoint"):
    """Recompute the header of the checkpoint at `path` after an edit of its HDF5 part: the
    tensor offsets (from h5py), the digest of the file and of the header. `edit(header)` may
    change the header first (its document); `version` replaces the version number."""
    header, userblock = read_header(path)
    with h5py.File(path, "r") as f:
        for item in header["tensors"]:
            if item[0] in f and hasattr(f[item[0]], "id") and hasattr(f[item[0]].id,
                                                                      "get_offset"):
                offset = f[item[0]].id.get_offset()
                item[1] = -1 if offset is None else offset
    if edit is not None:
        edit(header)
    data = bytearray(open(path, "rb").read())
    header["file_sha256"] = hashlib.sha256(bytes(data[userblock:])).hexdigest()
    text = json.dumps(header, separators=(",", ":")).encode()
    first = (f"{magic} {version or 2} {userblock} {len(text)} "
             f"{hashlib.sha256(text).hexdigest()}\n").encode()
    block = first + text + b"\n"
    assert len(block) <= userblock, "the edit does not fit the userblock"
    data[:len(block)] = block
    data[len(block):userblock] = b"\0" * (userblock - len(block))
    open(path, "wb").write(bytes(data))
    return path

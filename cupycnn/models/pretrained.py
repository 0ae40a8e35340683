"""Weights from elsewhere: torchvision checkpoints (`.pth`), or state dicts saved as `.npz` or
cupycnn HDF5 checkpoints, for transfer learning.

    model = cupycnn.models.resnet50(num_classes=15)
    report = load_pretrained(model, "resnet50-0676ba61.pth")   # torchvision's ImageNet weights
    report.skipped     # ['fc.weight', 'fc.bias']: a new 15-class head keeps its initialisation

Names are torchvision's on both sides (cupycnn's ResNets use them), so the weights go straight
in. Tensors whose shape differs (the classifier head of another class count, or a CIFAR stem)
are skipped and reported rather than refused; any other name mismatch is an error, since it
would silently leave layers untrained. Reading a `.pth` needs PyTorch (torch.load, weights only);
`.npz` and `.h5` need nothing more than NumPy and h5py, so a converted copy works anywhere:
`save_npz(path, state)`.
"""
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class PretrainedReport:
    loaded: list = field(default_factory=list)
    skipped: list = field(default_factory=list)      # (name, shape in file, shape in model)


def read_state(path):
    """An ordered {name: NumPy array} from a .pth, .npz or cupycnn .h5 checkpoint."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no pretrained weights at {path}")
    from ..safe_hdf5 import check_regular_file
    check_regular_file(path, ValueError, "pretrained weights file")   # a FIFO would block
    suffix = path.suffix.lower()
    if suffix in (".pth", ".pt"):
        try:
            import torch
        except ImportError:
            raise ImportError(f"{path} is a PyTorch file: reading it needs torch (pip install "
                              f"torch), or convert it once to .npz with save_npz") from None
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state and isinstance(
                state["state_dict"], dict):
            state = state["state_dict"]
        return {k: v.numpy() for k, v in state.items()}
    if suffix == ".npz":
        import zipfile
        try:
            with np.load(path, allow_pickle=False) as f:
                for name in f.files:
                    _check_npz_member(path, f.zip, name)
                return {k: f[k] for k in f.files}
        except (zipfile.BadZipFile, EOFError, OSError) as e:
            raise ValueError(f"{path}: not a readable .npz file ({type(e).__name__}: "
                             f"{e})") from None
    if suffix in (".h5", ".hdf5"):
        from ..checkpoint import load_checkpoint
        return dict(load_checkpoint(path).model_state)
    raise ValueError(f"{path}: pretrained weights must be .pth, .npz or .h5")


def _check_npz_member(path, archive, name):
    """A member of an .npz, from its header alone: a plain numeric array whose declared size
    its stored bytes hold (NumPy allocates the declared shape before reading: a 1 kB member
    could ask for terabytes). ValueError naming it otherwise."""
    from numpy.lib import format as npy
    info = archive.getinfo(name if name in archive.namelist() else name + ".npy")
    with archive.open(info) as member:
        try:
            version = npy.read_magic(member)
            read = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
            shape, _, dtype = read(member)
        except ValueError as e:
            raise ValueError(f"{path}: the member {name!r} is not a NumPy array ({e})") from None
    if dtype.hasobject or dtype.kind not in "biuf":
        raise ValueError(f"{path}: the member {name!r} holds {dtype}, not numbers")
    count = 1
    for s in shape:
        count *= int(s)
    if count * dtype.itemsize > info.file_size:
        raise ValueError(f"{path}: the member {name!r} declares shape {tuple(shape)} "
                         f"({count * dtype.itemsize:,} bytes) and holds {info.file_size:,}")


def save_npz(path, state):
    """Save a state dict (e.g. read_state of a .pth) as .npz, readable without PyTorch."""
    np.savez(path, **{k: np.asarray(v) for k, v in state.items()})
    return Path(path)


def load_pretrained(model, path_or_state, strict_names=True):
    """Copy every tensor of matching name and shape into `model`; skip (and report) those whose
    shape differs. With strict_names, a name in the model missing from the file (or the other
    way round) is a ValueError listing them."""
    state = path_or_state if isinstance(path_or_state, dict) else read_state(path_or_state)
    ours = model.state_dict()
    missing = [k for k in ours if k not in state]
    unexpected = [k for k in state if k not in ours]
    if strict_names and (missing or unexpected):
        raise ValueError(f"the pretrained weights do not fit {type(model).__name__}: "
                         + "; ".join(part for part in (
                             f"missing: {', '.join(missing)}" if missing else "",
                             f"unexpected: {', '.join(unexpected)}" if unexpected else "")
                             if part))
    report = PretrainedReport()
    chosen = {}
    for name, value in ours.items():
        if name not in state:
            continue
        value_in_file = np.asarray(state[name])
        if value_in_file.shape != value.shape:
            report.skipped.append((name, value_in_file.shape, value.shape))
        else:
            chosen[name] = value_in_file.astype(value.dtype, copy=False)
            report.loaded.append(name)
    model.load_state_dict(chosen, strict=False)
    return report

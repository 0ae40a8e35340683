"""The dataset tools: `cupycnn data COMMAND` (also `python -m cupycnn.data COMMAND`):
make-shards (a class-folder tree into tar shards, cupycnn.data.shards) and inspect."""
import argparse
import sys
import time
from pathlib import Path

from ..help_formatter import DefaultsHelpFormatter as Help


COMMANDS = {
    "make-shards": "convert a class-folder tree into tar shards (and index.json)",
    "inspect": "what a folder, a shard folder or TFRecord files hold",
}
DESCRIPTION = """\
Dataset tools: convert a folder of images into tar shards, say what a dataset source holds.

""" + "\n".join(f"  {name:<12} {what}" for name, what in COMMANDS.items()) + """

    cupycnn data make-shards photos/train shards/train --resize 256
    cupycnn data inspect shards/train"""

MAKE_SHARDS_DESCRIPTION = """\
Convert a class-folder tree (FOLDER/<class>/<image>, as ImageFolder reads it) into WebDataset-
style tar shards in OUT: shard-000000.tar, ... of --shard-size samples each, and index.json (the
class names, each shard's name and count). The samples are shuffled first (seeded), so that
each shard mixes the classes, as the readers' shuffle buffer needs; the images are stored as
they are, or re-encoded as JPEG with --resize. Read them back with cupycnn.data.TarShards(OUT)
or train on them with examples/train_imagenet.py --train OUT; docs/data.md describes the format
and how ranks and workers share the shards.

    cupycnn data make-shards imagenet/train shards/train --resize 256
    cupycnn data make-shards animals/ shards/animals --shard-size 500 --no-shuffle"""


def build_parser(prog="python -m cupycnn.data"):
    p = argparse.ArgumentParser(prog=prog, description=DESCRIPTION, formatter_class=Help)
    p.epilog = f"`{prog} COMMAND --help` gives a command's options."
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND",
                           help=", ".join(COMMANDS))
    # The subparsers take no help=: the commands are listed in the description, not twice.
    m = sub.add_parser("make-shards",
                       description=MAKE_SHARDS_DESCRIPTION, formatter_class=Help)
    m.add_argument("folder", metavar="FOLDER",
                   help="FOLDER/<class>/<image> (StreamingImageFolder's layout)")
    m.add_argument("out", metavar="OUT", help="the folder the shards and index.json go to")
    m.add_argument("--shard-size", type=int, default=1000, metavar="N", help="samples per shard")
    m.add_argument("--seed", type=int, default=0, help="the shuffle before sharding")
    m.add_argument("--no-shuffle", action="store_true",
                   help="keep the folder's order (class by class, each one's files sorted)")
    m.add_argument("--resize", type=int, metavar="SHORT",
                   help="re-encode as JPEG with the short side at most SHORT pixels (default: "
                        "each file stored as it is)")
    m.add_argument("--quality", type=int, default=90, metavar="Q",
                   help="JPEG quality with --resize")
    i = sub.add_parser("inspect",
                       description="What a dataset source holds: its kind, its number of "
                       "samples (and shards) and of classes.\nSOURCE is a class-folder tree, a "
                       "folder of tar shards, or a TFRecord file or a folder of them.",
                       formatter_class=Help)
    i.add_argument("source", metavar="SOURCE", help="a folder or TFRecord file")
    return p


def _progress():
    """progress(done, total) for make_shards: a line on stderr every 500 images and at the end."""
    started = time.perf_counter()

    def progress(done, total):
        if done == total or done % 500 == 0:
            rate = done / max(time.perf_counter() - started, 1e-9)
            print(f"\r{done}/{total} images, {rate:.0f}/s", end="\n" if done == total else "",
                  file=sys.stderr, flush=True)
    return progress


def check_make_shards(args):
    """The arguments' problem in one sentence, or None."""
    if args.shard_size < 1:
        return f"--shard-size must be at least 1 sample, not {args.shard_size}"
    if args.resize is not None and args.resize < 1:
        return f"--resize must be at least 1 pixel, not {args.resize}"
    if not 1 <= args.quality <= 100:
        return f"--quality must be from 1 to 100, not {args.quality}"
    folder, out = Path(args.folder).resolve(), Path(args.out).resolve()
    if out == folder or folder in out.parents:
        return (f"OUT ({args.out}) is inside FOLDER ({args.folder}): the shards would become "
                f"a class of the next conversion; write them elsewhere")
    return None


def make_shards_command(args):
    from .shards import make_shards
    paths = make_shards(args.folder, args.out, shard_size=args.shard_size, seed=args.seed,
                        shuffle=not args.no_shuffle, resize=args.resize, quality=args.quality,
                        progress=_progress())
    print(f"wrote {len(paths)} shard{'s' if len(paths) != 1 else ''} and index.json to "
          f"{args.out}")
    return 0


def inspect_command(args):
    from .shards import TarShards
    from .stream import StreamingImageFolder
    from .tfrecord import TFRecordDataset
    source = Path(args.source)
    if source.is_dir() and ((source / "index.json").is_file() or any(source.glob("*.tar"))):
        ds = TarShards(source)
    elif source.is_dir() and not any(p.is_dir() for p in source.iterdir()):
        ds = TFRecordDataset(source)
    elif source.is_file():
        ds = TFRecordDataset(source)
    else:
        ds = StreamingImageFolder(source)
    print(ds)
    return 0


def main(argv=None, prog="python -m cupycnn.data"):
    """The dataset tools; `prog` names the command in --help (`cupycnn data` when the cupycnn
    command forwards to it)."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    problem = check_make_shards(args) if args.command == "make-shards" else None
    if problem:
        print(f"{prog} make-shards: error: {problem}", file=sys.stderr)
        return 2
    from .. import atomic
    from . import BadImageError, ShardError
    try:
        if args.command == "make-shards":
            return make_shards_command(args)
        return inspect_command(args)
    except (BadImageError, ShardError, FileNotFoundError, ValueError, atomic.WriteError) as e:
        print(f"{prog} {args.command}: error: {e}", file=sys.stderr)
        return 2

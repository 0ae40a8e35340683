"""`python -m cupycnn.data COMMAND`: dataset tools.

    python -m cupycnn.data make-shards FOLDER OUT [--shard-size 1000] [--resize 256]
        convert a class-folder tree (e.g. ImageNet's train/) into WebDataset-style tar shards
    python -m cupycnn.data inspect SOURCE
        what a folder, a shard folder or TFRecord files hold
"""
import argparse
import sys
import time
from pathlib import Path


def build_parser(prog="python -m cupycnn.data"):
    p = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    m = sub.add_parser("make-shards", help="convert a class-folder tree into tar shards",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    m.add_argument("folder", help="root/<class>/<image> (StreamingImageFolder's layout)")
    m.add_argument("out", help="the folder the shards and index.json are written to")
    m.add_argument("--shard-size", type=int, default=1000, help="samples per shard")
    m.add_argument("--seed", type=int, default=0, help="the shuffle before sharding")
    m.add_argument("--no-shuffle", action="store_true", help="keep the folder's order")
    m.add_argument("--resize", type=int, metavar="SHORT",
                   help="re-encode as JPEG with the short side at most SHORT pixels")
    m.add_argument("--quality", type=int, default=90, help="JPEG quality with --resize")
    i = sub.add_parser("inspect", help="what a dataset source holds")
    i.add_argument("source")
    return p


def _progress(done, total, started=[None]):
    now = time.perf_counter()
    if started[0] is None:
        started[0] = now
    if done == total or done % 500 == 0:
        rate = done / max(now - started[0], 1e-9)
        print(f"\r{done}/{total} images, {rate:.0f}/s", end="\n" if done == total else "",
              file=sys.stderr, flush=True)


def make_shards_command(args):
    from .shards import make_shards
    paths = make_shards(args.folder, args.out, shard_size=args.shard_size, seed=args.seed,
                        shuffle=not args.no_shuffle, resize=args.resize, quality=args.quality,
                        progress=_progress)
    print(f"wrote {len(paths)} shards and index.json to {args.out}")
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
    args = build_parser(prog).parse_args(argv)
    from . import BadImageError, ShardError
    try:
        if args.command == "make-shards":
            return make_shards_command(args)
        return inspect_command(args)
    except (BadImageError, ShardError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())

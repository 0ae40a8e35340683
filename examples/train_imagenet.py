"""Train ResNet-50 on ImageNet, data-parallel across GPUs, the standard recipe:

    cupycnn data make-shards imagenet/train shards/train --resize 256   # once
    mpirun -n 8 python examples/train_imagenet.py --train shards/train --val imagenet
    python examples/train_imagenet.py --train imagenet --val imagenet              # folders

    python examples/train_imagenet.py --synthetic 2560 --benchmark --device cuda   # GPU check

The recipe (Goyal et al. 2017, "Accurate, Large Minibatch SGD"; torchvision's reference
scripts): ResNet-50 (torchvision's layout, ImageNet stem), SGD with momentum 0.9, learning rate
0.1 per 256 images of global batch, linear warm-up for 5 epochs from a third of it, then a
cosine decay to zero, stepped every batch; weight decay 1e-4 on convolution and dense weights
only (not on batchnorm or biases); cross-entropy with label smoothing 0.1; 90 epochs of
RandomResizedCrop(224) + horizontal flip, evaluated on Resize(256) + CenterCrop(224); inputs
normalised with ImageNet's channel mean and std.

Data: --train and --val each name an ImageNet root (train/, val/ with class folders or a labels
file: cupycnn.data.ImageNet), a folder of tar shards (made by `cupycnn data make-shards`),
or a folder of TFRecord files. Each rank reads its own part: its shards, or
its DistributedSampler share of the files; --workers processes per rank decode and crop the
JPEGs into shared memory (simplejpeg where installed), the device normalises. --synthetic N
writes N random ImageNet-sized JPEGs (500 x 375, 1000 classes) as shards once and trains on
them: the input pipeline at full cost with no dataset at hand.

--benchmark measures instead of training: images/s of the input pipeline alone (decode, crop,
upload), of the model's training step alone (the same batch again and again), and of the two
together, per rank and for the job.
"""
import argparse
import io
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def build_parser():
    from cupycnn import cli
    from cupycnn.help_formatter import DefaultsHelpFormatter
    p = argparse.ArgumentParser(description=__doc__, formatter_class=DefaultsHelpFormatter)
    d = p.add_argument_group("data")
    d.add_argument("--train", metavar="PATH", help="the training set: an ImageNet root (train/ "
                   "with a folder per class), a folder of tar shards (cupycnn data make-shards) "
                   "or of TFRecord files")
    d.add_argument("--val", metavar="PATH", help="the evaluation set, in any form --train takes "
                   "(of an ImageNet root, its val/: class folders or a labels file); none: no "
                   "evaluation")
    d.add_argument("--synthetic", type=int, metavar="N",
                   help="instead of --train: N synthetic ImageNet-sized JPEGs (500 x 375, 1000 "
                        "classes), written once as shards")
    d.add_argument("--synthetic-dir", default="data/synthetic-imagenet", metavar="DIR",
                   help="where --synthetic's shards are written (a folder per N) and reused")
    d.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1), metavar="N",
                   help="decoding processes per rank (default: the CPU count, at most 8: "
                        "%(default)s here)")
    d.add_argument("--image-size", type=int, default=224, metavar="SIZE",
                   help="the RandomResizedCrop of training and the centre crop of evaluation")
    d.add_argument("--eval-resize", type=int, metavar="SHORT",
                   help="evaluation: the short side is resized to SHORT, then centre-cropped "
                        "(default: SIZE x 8/7: 256 for 224)")
    m = p.add_argument_group("model and optimisation (the recipe above)")
    m.add_argument("--model", default="resnet50", choices=["resnet18", "resnet34", "resnet50"],
                   help="a torchvision-layout ResNet with the ImageNet stem")
    m.add_argument("--lr", type=float, help="the peak learning rate, reached after the warm-up "
                   "(default: 0.1 x batch / 256: 0.4 at 1024)")
    m.add_argument("--weight-decay", type=float, default=1e-4,
                   help="L2 penalty on convolution and dense weights (not batchnorm, biases)")
    # The options the training command has too, with this recipe's defaults.
    for action in cli.training_options("epochs", "batch_size", "momentum", "label_smoothing",
                                       "warmup_epochs", "bucket_mb", "sync_bn", epochs=90,
                                       batch_size=1024, momentum=0.9, label_smoothing=0.1,
                                       warmup_epochs=5.0):
        m._add_action(action)
    r = p.add_argument_group("run")
    r._add_action(cli.training_options("device")[0])
    r.add_argument("--seed", type=int, default=0,
                   help="initialisation, the shard order and shuffling, and the augmentation")
    r.add_argument("--log-dir", default="runs/imagenet-resnet50", metavar="DIR",
                   help="where the checkpoints (last.h5 unless --checkpoint; best.h5 with --val) "
                        "and log.csv go")
    for action in cli.training_options("checkpoint", "resume", "no_progress"):
        r._add_action(action)
    r.add_argument("--benchmark", action="store_true",
                   help="measure instead of training: images/s of the input pipeline, of the "
                        "training step, and of both together")
    r.add_argument("--benchmark-steps", type=int, default=20, metavar="N",
                   help="--benchmark: steps timed for each figure")
    r.add_argument("--json", metavar="FILE", help="--benchmark: also write the figures here "
                   "(name -> images/s; benchmarks/gpu_session.sh collects them)")
    return p


# ------------------------------------------------------------------------------- data

def synthetic_shards(n, folder, rank, ctx):
    """N random 500 x 375 JPEGs (quality 90: about ImageNet's bytes per image) in shards of
    256, labels k % 1000; written by rank 0 once, reused after."""
    from PIL import Image
    from cupycnn.data import write_shards
    folder = Path(folder) / f"n{n}"
    if rank == 0 and not (folder / "index.json").is_file():
        rng = np.random.default_rng(0)
        base = rng.integers(0, 256, (47, 63, 3), dtype=np.uint8)   # smooth-ish, photo-like

        def samples():
            for i in range(n):
                tile = np.roll(base, (i * 7) % 47, axis=0) ^ np.uint8(i % 251)
                image = Image.fromarray(tile).resize((500, 375), Image.BILINEAR)
                buffer = io.BytesIO()
                image.save(buffer, "JPEG", quality=90)
                yield f"{i:08d}", buffer.getvalue(), "jpg", i % 1000
        write_shards(samples(), folder, classes=[f"class{k}" for k in range(1000)],
                     shard_size=256)
    ctx.barrier()
    return folder


def open_source(path, split, transform):
    """A streamed dataset for `path`: shards, TFRecords or an ImageNet root."""
    from cupycnn import data
    path = Path(path)
    if (path / "index.json").is_file() or any(path.glob("*.tar")):
        return data.TarShards(path, transform)
    if path.is_dir() and any(p.suffix.lower() in (".tfrec", ".tfrecord") for p in path.iterdir()):
        return data.TFRecordDataset(path, transform)
    return data.ImageNet(path, split, transform)


def datasets(args, ctx):
    from cupycnn import data
    size = args.image_size
    resize = args.eval_resize or int(round(size * 256 / 224))
    train_tf = data.RandomResizedCrop(size, seed=args.seed * 7919 + 13)
    eval_tf = data.ResizeCenterCrop(resize, size)
    if args.synthetic:
        folder = synthetic_shards(args.synthetic, args.synthetic_dir, ctx.rank, ctx)
        return data.TarShards(folder, train_tf), None
    if not args.train:
        raise ValueError("give --train (an ImageNet root, shard folder or TFRecord folder) or "
                         "--synthetic N")
    train = open_source(args.train, "train", train_tf)
    val = open_source(args.val, "val", eval_tf) if args.val else None
    return train, val


# ------------------------------------------------------------------------------- main

def recipe(args, ctx):
    """The optimizer settings as cupycnn.cli's builders take them."""
    lr = args.lr if args.lr is not None else 0.1 * args.batch_size / 256
    return argparse.Namespace(optimizer="sgd", lr=lr, momentum=args.momentum, nesterov=False,
                              weight_decay=args.weight_decay, l1=0.0, penalize="weights",
                              freeze_backbone=False, schedule="cosine",
                              warmup_epochs=args.warmup_epochs, epochs=args.epochs)


def main(argv=None):
    args = build_parser().parse_args(argv)
    import cupycnn
    from cupycnn import cli
    ctx = cli.start(args)
    if ctx is None:
        return 2
    cupycnn.manual_seed(args.seed)
    with ctx.abort_on_error():
        try:
            return run(args, ctx)
        except (ValueError, FileNotFoundError) as e:
            if ctx.size > 1:
                raise
            print(f"error: {e}", file=sys.stderr)
            return 2


def run(args, ctx):
    from cupycnn import data, devices, models
    from cupycnn.cli import build_optimizer, build_schedule
    from cupycnn.losses import SoftmaxCrossEntropy
    from cupycnn.train import CSVLogger, ModelCheckpoint, Trainer

    say = (lambda *a: print(*a, flush=True)) if ctx.rank == 0 else (lambda *a: None)
    train, val = datasets(args, ctx)
    per_rank = ctx.per_rank_batch(args.batch_size)
    normalize = data.Normalize(IMAGENET_MEAN, IMAGENET_STD)
    train_loader = data.Loader(train, per_rank, shuffle=True, drop_last=True, seed=args.seed,
                               transform=normalize, rank=ctx.rank, world_size=ctx.size,
                               num_workers=args.workers)
    if len(train_loader) == 0:
        raise ValueError(f"the training set ({len(train)} images over {ctx.size} ranks) is "
                         f"smaller than one batch of {per_rank} per rank; lower --batch-size")
    val_loader = None
    if val is not None:
        val_loader = data.Loader(val, per_rank, shuffle=False, transform=normalize,
                                 rank=ctx.rank, world_size=ctx.size, pad=False,
                                 num_workers=args.workers)
    classes = train.classes or [str(k) for k in range(1000)]
    config = {"model": args.model, "model_kwargs": {"num_classes": len(classes),
                                                    "stem": "imagenet"},
              "input_shape": [3, args.image_size, args.image_size],
              "resize": [args.image_size, args.image_size], "crop": True,
              "dataset": str(args.train or "synthetic")}
    model = models.build(args.model, **config["model_kwargs"])
    if args.sync_bn and ctx.size > 1:
        ctx.synchronize_batchnorm(model)
    settings = recipe(args, ctx)
    optimizer = build_optimizer(model, settings)
    schedule, interval = build_schedule(optimizer, settings, len(train_loader))
    ctx.broadcast_parameters(model)
    ctx.check_consistency(model, optimizer, args.batch_size, epochs=args.epochs,
                          seed=args.seed, batches_per_epoch=len(train_loader))
    loss = SoftmaxCrossEntropy(label_smoothing=args.label_smoothing)
    last = args.checkpoint or os.path.join(args.log_dir, "last.h5")
    trainer = Trainer(model, optimizer, loss, scheduler=schedule, scheduler_interval=interval,
                      callbacks=[ModelCheckpoint(last=last,
                                                 best=os.path.join(args.log_dir, "best.h5")
                                                 if val_loader is not None else None,
                                                 monitor="val_accuracy"),
                                 CSVLogger(os.path.join(args.log_dir, "log.csv"))],
                      distributed=ctx, progress=not args.no_progress, config=config,
                      classes=classes, normalization={"mean": list(IMAGENET_MEAN),
                                                      "std": list(IMAGENET_STD)})
    say(f"cupycnn: {args.model} ({model.num_parameters():,} parameters) on {train!r}; "
        f"{len(train_loader)} steps per epoch; device {devices.device()}, {ctx.size} rank(s), "
        f"batch {args.batch_size} ({per_rank} per rank), {args.workers} decoding workers per "
        f"rank, SGD lr {settings.lr:g} (warm-up {args.warmup_epochs:g} epochs, cosine), "
        f"weight decay {args.weight_decay:g} off batchnorm and biases, label smoothing "
        f"{args.label_smoothing:g}")
    try:
        if args.benchmark:
            return benchmark(args, ctx, trainer, train_loader, say)
        if args.resume:
            trainer.resume(last)
            say(f"resumed after epoch {trainer.epoch}")
        trainer.fit(train_loader, args.epochs, val_loader=val_loader)
        if val_loader is not None:
            result = trainer.evaluate(val_loader, desc="val")
            say(f"val: loss {result['loss']:.4f}, top-1 accuracy {100 * result['accuracy']:.2f}% "
                f"({result['count']} images)")
        return 0
    finally:
        train_loader.close()
        if val_loader is not None:
            val_loader.close()


def benchmark(args, ctx, trainer, loader, say):
    """images/s of the pipeline alone, the step alone and both, medians over ranks' steps."""
    from cupycnn import devices
    from cupycnn.data.decode import jpeg_decoder
    from cupycnn.ops import metrics as metric_ops
    steps = min(args.benchmark_steps, len(loader))
    per_rank = loader.batch_size

    def timed(iterable, work):
        times, started = [], None
        for k, item in enumerate(iterable):
            work(item)
            devices.synchronize()
            now = time.perf_counter()
            if started is not None:
                times.append(now - started)
            started = now
            if k + 1 >= steps:
                break
        return times

    sums = metric_ops.new_sums()
    first = next(iter(loader))
    batch = (first[0], first[1])
    timed(range(min(3, steps)), lambda _: trainer.train_step(*batch, sums))   # warm-up
    step = timed(range(steps + 1), lambda _: trainer.train_step(*batch, sums))
    loader.set_epoch(1)
    pipeline = timed(loader, lambda item: None)
    loader.set_epoch(2)
    both = timed(loader, lambda item: trainer.train_step(item[0], item[1], sums))
    rows = []
    for name, times in (("input pipeline alone", pipeline), ("model step alone", step),
                        ("pipeline + step (training)", both)):
        median = float(np.median(times)) if times else math.nan
        total = ctx.allgather(per_rank / median if median else math.nan)
        rows.append((name, per_rank / median, float(np.sum(total))))
    say(f"\n| {'what':28s} | images/s per rank | images/s, {ctx.size} rank(s) |")
    say(f"| {'-' * 28} | --- | --- |")
    for name, one, job in rows:
        say(f"| {name:28s} | {one:.1f} | {job:.1f} |")
    say(f"({steps} steps of {per_rank} per rank, medians; device {devices.device()}, "
        f"{args.workers} workers per rank decoding with {jpeg_decoder()}, {os.cpu_count()} "
        f"CPUs)")
    if args.json and ctx.rank == 0:
        import json
        figures = {f"{name}, images/s per rank": {"value": one, "unit": "images/s"}
                   for name, one, _ in rows}
        figures["pipeline / step"] = rows[0][1] / rows[1][1]
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(figures, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The roofline of ResNet-18's convolutions (CIFAR stem, batch 256) on an H200: per layer and
product, the FLOPs, the compulsory bytes at each precision's storage size, the arithmetic
intensity, and the time floor at the FP32 SIMT, TF32 and BF16 tensor-core peaks. Arithmetic, not
a measurement: benchmarks/conv2d.py measures each kernel against these floors.

    python benchmarks/roofline.py                     # the section, Markdown, on stdout
    python benchmarks/roofline.py --update-docs       # into docs/BENCHMARKS.md (generated block)
    python benchmarks/roofline.py --ceilings OUT/figures.json   # a GPU session's measured ceilings

The cost model. A product's floor is max(FLOPs / peak, bytes / bandwidth): no kernel runs
faster than the larger term, and which term is larger says whether the product is bound by the
arithmetic or by moving bytes. FLOPs = 2 N C_out H_out W_out C_in kh kw for each of the three
products (forward y = w * x, input gradient dx = w^T * dy, weight gradient dw = dy * x^T: one
multiply-add per (output pixel, weight) pair each). Compulsory bytes: each operand read once and
the result written once, forward x, w -> y; input gradient dy, w -> dx; weight gradient dy,
x -> dw; at 4 bytes an element (fp32 and tf32: TF32 is an FP32 storage format) or 2 (bf16, as
torch.autocast stores a convolution's operands and result). The ridge point, peak / bandwidth,
is the intensity (FLOP per byte) above which a product can be compute-bound.

The layers are read off the model (cupycnn.models.resnet18(stem="cifar"), one forward pass of
one image on the numpy device, recording each Conv2D's input), so the table follows the model.
The ceilings are in CEILINGS, each with where its figure comes from: measured on a lent H200
where there is such a figure, the datasheet otherwise.
"""
import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # run from a source tree

BATCH = 256
PRODUCTS = ("forward", "input grad", "weight grad")
PRECISIONS = ("fp32", "tf32", "bf16")
ITEMSIZE = {"fp32": 4, "tf32": 4, "bf16": 2}
UNITS = {"memory": "TB/s", "fp32": "TFLOP/s", "tf32": "TFLOP/s", "bf16": "TFLOP/s"}


@dataclass(frozen=True)
class Ceiling:
    value: float          # bytes/s or FLOP/s
    source: str


# H200 SXM (the H100's compute, faster memory). Matrix rates are dense (no sparsity).
CEILINGS = {
    "memory": Ceiling(4.3e12, "seen on a lent H200: a device-to-device copy through PyTorch "
                              "moved 4.3 TB/s (bytes read + written), 2026-10-28 and 11-04 "
                              "(datasheet: 4.8)"),
    "fp32": Ceiling(67e12, "datasheet: FP32 without tensor cores, H100/H200 SXM"),
    "tf32": Ceiling(495e12, "datasheet: dense TF32 tensor-core rate, H100/H200 SXM"),
    "bf16": Ceiling(788e12, "seen on a lent H200: an 8192^3 BF16 matrix product through "
                            "PyTorch on random data, 2026-10-28 (769-798 on 11-04; datasheet: "
                            "989)"),
}
# benchmarks/gpu_ceilings.py's figure names (its --json, or a GPU session's figures.json with
# the step name "ceilings." in front) for each ceiling, and the unit they are in.
MEASURED_NAMES = {"memory": ("copy bandwidth", 1e12), "fp32": ("sgemm fp32", 1e12),
                  "tf32": ("matmul tf32", 1e12), "bf16": ("matmul bf16", 1e12)}


@dataclass(frozen=True)
class Conv:
    """One convolution of the network at batch n: x [n, c, h, w] -> y [n, o, ho, wo]."""
    name: str
    n: int
    c: int
    o: int
    h: int
    w: int
    kh: int
    kw: int
    stride: tuple
    padding: tuple
    ho: int
    wo: int

    @property
    def shape(self):
        """What the floor depends on (everything but the name)."""
        return (self.n, self.c, self.o, self.h, self.w, self.kh, self.kw, self.stride,
                self.padding)

    @property
    def label(self):
        s = self.stride[0] if self.stride[0] == self.stride[1] else "x".join(map(str, self.stride))
        return f"{self.c}->{self.o} {self.kh}x{self.kw} s{s} {self.h}x{self.w}"

    def flops(self, product=None):
        """2 N C_out H_out W_out C_in kh kw, the same for each product."""
        return 2.0 * self.n * self.o * self.ho * self.wo * self.c * self.kh * self.kw

    def elements(self, product):
        """(elements read, elements written) of a product's compulsory traffic."""
        x, y = self.n * self.c * self.h * self.w, self.n * self.o * self.ho * self.wo
        w = self.o * self.c * self.kh * self.kw
        return {"forward": (x + w, y), "input grad": (y + w, x), "weight grad": (y + x, w)}[
            product]

    def bytes(self, product, itemsize):
        return itemsize * sum(self.elements(product))

    def floor(self, product, precision, itemsize=None, ceilings=None):
        """(seconds, "compute" or "memory") at `precision`'s peak, with operands and result
        of `itemsize` bytes (default: the precision's storage size)."""
        ceilings = ceilings or CEILINGS
        itemsize = itemsize or ITEMSIZE[precision]
        compute = self.flops(product) / ceilings[precision].value
        memory = self.bytes(product, itemsize) / ceilings["memory"].value
        return (compute, "compute") if compute >= memory else (memory, "memory")


def resnet18_convolutions(batch=BATCH):
    """Every Conv2D of ResNet-18 with the CIFAR stem, in the order of the forward pass, with the
    shapes it sees at `batch` (recorded from a forward pass of one image on the numpy device)."""
    import numpy as np

    from cupycnn import devices
    from cupycnn.layers import Conv2D
    from cupycnn.models import resnet18
    previous = devices._current              # restored as it was (None: not chosen yet)
    devices.use("numpy")
    try:
        model = resnet18(num_classes=10, stem="cifar")
        seen = []
        for name, layer in model._named_layers():
            if isinstance(layer, Conv2D):
                def recording(x, training=True, _layer=layer, _name=name.rstrip("."),
                              _forward=layer.forward):
                    seen.append((_name, _layer, tuple(x.shape)))
                    return _forward(x, training)
                layer.forward = recording
        model.forward(np.zeros((1, 3, 32, 32), np.float32), training=False)
    finally:
        devices._current = previous
    convs = []
    for name, layer, (_, c, h, w) in seen:
        _, o, ho, wo = layer.output_shape((batch, c, h, w))
        convs.append(Conv(name, batch, c, o, h, w, *layer.kernel_size, tuple(layer.stride),
                          tuple(layer.padding), ho, wo))
    return convs


def distinct(convs):
    """[(the first Conv of each distinct shape, how many convolutions have it)], in order."""
    counts = {}
    for conv in convs:
        first, count = counts.get(conv.shape, (conv, 0))
        counts[conv.shape] = (first, count + 1)
    return list(counts.values())


def measured_ceilings(path):
    """CEILINGS with the figures of benchmarks/gpu_ceilings.py's JSON (or of a GPU session's
    figures.json) in place of the ones it measured, labelled with the device and the date."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    figures, date = data, None
    if "figures" in data:                                   # a session's figures.json
        date = data.get("date")
        figures = {k[len("ceilings."):]: v for k, v in data["figures"].items()
                   if k.startswith("ceilings.")}
    device = figures.get("device")
    device = device.get("value") if isinstance(device, dict) else device
    ceilings = dict(CEILINGS)
    for key, (name, scale) in MEASURED_NAMES.items():
        if name in figures:
            value = figures[name]
            value = value["value"] if isinstance(value, dict) else value
            if not isinstance(value, (int, float)) or value <= 0:
                raise SystemExit(f"{path}: {name} is {value!r}, not a positive figure")
            ceilings[key] = Ceiling(float(value) * scale, f"measured by benchmarks/gpu_ceilings.py"
                                    f" ({name}) on {device or 'the GPU'}"
                                    + (f", {date}" if date else ""))
    return ceilings


def _us(seconds):
    return f"{seconds * 1e6:.1f}"


def markdown(batch=BATCH, ceilings=None):
    """The generated section: ceilings, ridge points, the per-layer table, the step's totals."""
    ceilings = ceilings or CEILINGS
    convs = resnet18_convolutions(batch)
    bw = ceilings["memory"].value
    out = [f"Ceilings (H200 SXM; `python benchmarks/roofline.py --update-docs`, batch {batch}):",
           ""]
    out.append("| ceiling | value | ridge point | source |")
    out.append("|---|---|---|---|")
    for key in ("memory", *PRECISIONS):
        c = ceilings[key]
        ridge = "-" if key == "memory" else f"{c.value / bw:.0f} FLOP/B"
        what = {"memory": "memory bandwidth", "fp32": "fp32 SIMT (FFMA)",
                "tf32": "tf32 tensor cores", "bf16": "bf16 tensor cores"}[key]
        out.append(f"| {what} | {c.value / 1e12:g} {UNITS[key]} | {ridge} | {c.source} |")
    out += ["", f"Per convolution of ResNet-18 (CIFAR stem), in the order of the forward pass, "
            f"batch {batch}. Floors in microseconds per product, with (c) compute-bound or (m) "
            f"memory-bound; bf16 at 2-byte storage (torch.autocast's) and, last, at 4-byte "
            f"storage (ours: every precision reads and writes FP32 tensors).", ""]
    out.append("| layer | convolution | product | GFLOP | MB at 4 B / 2 B | FLOP/B at 4 B / 2 B "
               "| floor fp32 | floor tf32 | floor bf16 | floor bf16, FP32 storage |")
    out.append("|" + "---|" * 10)
    totals = {key: 0.0 for key in ("fp32", "tf32", "bf16", "bf16 fp32-storage")}
    bound = {key: 0.0 for key in totals}      # the part in memory-bound products
    kinds_of = {}                               # label -> precision -> "compute" or "memory"
    for conv in convs:
        rows = []
        for product in PRODUCTS:
            floors = {p: conv.floor(product, p, ceilings=ceilings) for p in PRECISIONS}
            floors["bf16 fp32-storage"] = conv.floor(product, "bf16", 4, ceilings)
            for key, (seconds, kind) in floors.items():
                kinds_of.setdefault(conv.label, {})[key] = kind
                totals[key] += seconds
                bound[key] += seconds if kind == "memory" else 0.0
            f = conv.flops(product)
            b4, b2 = conv.bytes(product, 4), conv.bytes(product, 2)
            cells = [f"{f / 1e9:.2f}", f"{b4 / 1e6:.1f} / {b2 / 1e6:.1f}",
                     f"{f / b4:.0f} / {f / b2:.0f}"] + [
                f"{_us(s)} ({kind[0]})" for s, kind in floors.values()]
            rows.append((product, cells))
        if all(cells == rows[0][1] for _, cells in rows):     # the usual case: say it once
            rows = [("each of 3", rows[0][1])]
        for product, cells in rows:
            out.append(f"| {conv.name} | {conv.label} | {product} | " + " | ".join(cells) + " |")
    n = len(convs)
    out.append(f"| **the step** | {n} convolutions | 3 products each | "
               f"{3 * sum(c.flops() for c in convs) / 1e9:.0f} | | | "
               + " | ".join(f"**{totals[k] * 1e3:.2f} ms**" for k in totals) + " |")
    names = {"fp32": "fp32", "tf32": "tf32", "bf16": "bf16",
             "bf16 fp32-storage": "bf16 with FP32 storage"}
    memory_bound = {k: [label for label, kinds in kinds_of.items() if kinds[k] == "memory"]
                    for k in totals}
    out += ["", f"Read: the step's convolutions cannot take less than "
            f"{totals['tf32'] * 1e3:.2f} ms at tf32 and {totals['bf16'] * 1e3:.2f} ms at bf16 "
            f"({totals['bf16 fp32-storage'] * 1e3:.2f} ms with FP32 storage, as ours today) on "
            f"an H200, against {totals['fp32'] * 1e3:.2f} ms at fp32 without tensor cores. "
            "Memory-bound convolutions, and their share of the step's floor: "
            + "; ".join(f"{names[k]}: {', '.join(memory_bound[k]) or 'none'} "
                        f"({100 * bound[k] / totals[k]:.0f}%)" for k in totals) + "."]
    return "\n".join(out)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=BATCH)
    parser.add_argument("--ceilings", metavar="JSON",
                        help="benchmarks/gpu_ceilings.py --json output (or a GPU session's "
                             "figures.json): use its measured ceilings")
    parser.add_argument("--update-docs", action="store_true",
                        help="write the section into docs/BENCHMARKS.md (its generated block)")
    args = parser.parse_args(argv)
    ceilings = measured_ceilings(args.ceilings) if args.ceilings else None
    text = markdown(args.batch, ceilings)
    if args.update_docs:
        import docblock
        docblock.update_block("roofline.py", text)
        print(f"wrote the roofline into {docblock.DOCS}")
    else:
        print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

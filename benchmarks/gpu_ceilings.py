"""The ceilings every kernel figure is compared with, measured on this GPU: memory bandwidth
(a large device-to-device copy, bytes read plus bytes written), FP32 matrix throughput (a large
matrix product through cuBLAS, via CuPy, TF32 off), and the TF32 and BF16 tensor-core rates (the
same product through PyTorch). Used only as yardsticks: no cupycnn op calls cuBLAS;
benchmarks/roofline.py --ceilings takes them for its floors.

    python benchmarks/gpu_ceilings.py [--json FILE]
    python benchmarks/gpu_ceilings.py --dry-run     NumPy on the host at tiny sizes: the script's
                                                    own code, for CI (figures of no meaning)
"""
import argparse
import json
import os
import statistics

import timing     # benchmarks/timing.py: this script's folder is on sys.path

os.environ.setdefault("CUPY_TF32", "0")        # read by CuPy when it loads: FP32, not TF32

import numpy as np  # noqa: E402


def gpu_timer(fn, repeats=20):
    """The median GPU time of one call (CUDA events), after a first call."""
    fn()
    return statistics.median([timing.gpu_seconds(fn, 1) for _ in range(repeats)])


def host_timer(fn, repeats=5):
    """The median wall time of one call, after a first call."""
    fn()
    return statistics.median([timing.wall_seconds(fn, 1) for _ in range(repeats)])


def tensor_core_rates(timed, device, size):
    """The TF32 and BF16 matrix rates (benchmarks/roofline.py's tf32 and bf16 ceilings): size^3
    products of random matrices through PyTorch (cuBLAS on the GPU, on the legacy default stream
    that CuPy's events time; its CPU build, tiny, in a dry run). {} without PyTorch."""
    try:
        import torch
    except ImportError:
        print("PyTorch not installed: no TF32 / BF16 matrix rates")
        return {}
    matmul = torch.backends.cuda.matmul

    def allow_tf32(on):          # PyTorch's newer setting where it has it
        if hasattr(matmul, "fp32_precision"):
            matmul.fp32_precision = "tf32" if on else "ieee"
        else:
            matmul.allow_tf32 = on

    figures = {}
    generator = torch.Generator(device=device).manual_seed(0)
    for name, dtype, tf32 in (("matmul tf32", torch.float32, True),
                              ("matmul bf16", torch.bfloat16, False)):
        allow_tf32(tf32)
        a, b = (torch.randn(size, size, device=device, generator=generator).to(dtype)
                for _ in range(2))
        seconds = timed(lambda: torch.matmul(a, b), repeats=10 if device == "cuda" else 3)
        tflops = 2 * size ** 3 / seconds / 1e12
        print(f"PyTorch {'cuBLAS' if device == 'cuda' else 'CPU'} {name} {size}^3: "
              f"{tflops:.1f} TFLOP/s")
        figures[name] = {"value": float(f"{tflops:.4g}"), "unit": "TFLOP/s"}
    allow_tf32(False)
    return figures


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true")
    p.add_argument("--json", help="also write the figures to this file")
    args = p.parse_args()
    figures = {}
    if args.dry_run:
        xp, timed, n, size = np, host_timer, 1 << 20, 128
        print("dry run: NumPy on the host, tiny sizes")
    else:
        import cupy
        xp, timed, n, size = cupy, gpu_timer, 1 << 28, 8192            # 1 GiB of float32
        props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
        name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        print(f"device: {name}, {props['multiProcessorCount']} SMs, "
              f"{props['totalGlobalMem'] / 2**30:.1f} GiB, L2 {props['l2CacheSize'] / 2**20:.0f} MiB")
        figures["device"] = name
    rng = xp.random.default_rng(0) if args.dry_run else None
    src = (rng.standard_normal(n, dtype=np.float32) if args.dry_run else
           xp.random.standard_normal(n, dtype=xp.float32))
    dst = xp.empty_like(src)
    seconds = timed(lambda: xp.copyto(dst, src))
    bandwidth = 2 * src.nbytes / seconds / 1e12
    print(f"device-to-device copy: {bandwidth:.2f} TB/s "
          f"(read + write of {src.nbytes / 2**30:.3f} GiB in {1e3 * seconds:.2f} ms)")
    figures["copy bandwidth"] = {"value": round(bandwidth, 3), "unit": "TB/s"}
    a = xp.asarray(np.random.default_rng(1).standard_normal((size, size), dtype=np.float32))
    b = xp.asarray(np.random.default_rng(2).standard_normal((size, size), dtype=np.float32))
    seconds = timed(lambda: xp.matmul(a, b), repeats=10 if not args.dry_run else 3)
    tflops = 2 * size ** 3 / seconds / 1e12
    print(f"{'cuBLAS' if not args.dry_run else 'NumPy'} SGEMM {size}^3 (FP32, no TF32): "
          f"{tflops:.1f} TFLOP/s")
    figures["sgemm fp32"] = {"value": round(tflops, 2), "unit": "TFLOP/s"}
    figures.update(tensor_core_rates(timed, "cpu" if args.dry_run else "cuda", size))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=1)


if __name__ == "__main__":
    main()

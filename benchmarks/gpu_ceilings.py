"""The two ceilings every kernel figure is compared with, measured on this GPU: memory bandwidth
(a large device-to-device copy, bytes read plus bytes written) and FP32 matrix throughput
(a large matrix product through cuBLAS, via CuPy, TF32 off). Used only as yardsticks: no
cupycnn op calls cuBLAS.

    python benchmarks/gpu_ceilings.py
"""
import statistics

import numpy as np


def main():
    import cupy
    dev = cupy.cuda.Device()
    props = cupy.cuda.runtime.getDeviceProperties(dev.id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    print(f"device: {name}, {props['multiProcessorCount']} SMs, "
          f"{props['totalGlobalMem'] / 2**30:.1f} GiB, L2 {props['l2CacheSize'] / 2**20:.0f} MiB")

    def timed(fn, repeats=20):
        fn()
        start, stop = cupy.cuda.Event(), cupy.cuda.Event()
        times = []
        for _ in range(repeats):
            start.record()
            fn()
            stop.record()
            stop.synchronize()
            times.append(cupy.cuda.get_elapsed_time(start, stop) / 1e3)
        return statistics.median(times)

    n = 1 << 28                                        # 1 GiB of float32
    src = cupy.random.standard_normal(n, dtype=cupy.float32)
    dst = cupy.empty_like(src)
    seconds = timed(lambda: cupy.copyto(dst, src))
    print(f"device-to-device copy: {2 * src.nbytes / seconds / 1e12:.2f} TB/s "
          f"(read + write of {src.nbytes / 2**30:.0f} GiB in {1e3 * seconds:.2f} ms)")

    import os
    os.environ["CUPY_TF32"] = "0"
    size = 8192
    a = cupy.random.standard_normal((size, size), dtype=cupy.float32)
    b = cupy.random.standard_normal((size, size), dtype=cupy.float32)
    seconds = timed(lambda: cupy.matmul(a, b), repeats=10)
    print(f"cuBLAS SGEMM {size}^3 (FP32, no TF32): {2 * size ** 3 / seconds / 1e12:.1f} TFLOP/s")


if __name__ == "__main__":
    main()

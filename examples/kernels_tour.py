"""A tour of the kernels: run each op on every device this machine has and compare with the
NumPy reference, printing the error and the time.

    python examples/kernels_tour.py [--size 256]
"""
import argparse
import time

import numpy as np

import cupycnn
from cupycnn import reference
from cupycnn.layers import Dense, ReLU
from cupycnn.ops import elementwise, gemm, reduce


def rel_err(out, ref):
    out = cupycnn.asnumpy(out).astype(np.float64)
    return np.linalg.norm(out - ref) / max(np.linalg.norm(ref), 1e-30)


def timed(fn):
    fn()                                    # warm-up: compiles and caches the kernel
    cupycnn.synchronize()
    start = time.perf_counter()
    out = fn()
    cupycnn.synchronize()
    return out, time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=256, help="matrix size for the GEMM")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    n = args.size
    a, b = rng.standard_normal((n, n)).astype(np.float32), rng.standard_normal((n, n)).astype(np.float32)
    x = rng.standard_normal((8, 16, 32, 32)).astype(np.float32)
    a64, b64, x64 = a.astype(np.float64), b.astype(np.float64), x.astype(np.float64)
    cases = [
        ("relu_forward", lambda: elementwise.relu_forward(X), reference.elementwise.relu_forward(x64)),
        ("channel_sum", lambda: reduce.channel_sum(X), reference.reduce.channel_sum(x64)),
        (f"gemm {n}^3 nn", lambda: gemm.gemm(A, B), a64 @ b64),
        (f"gemm {n}^3 nt", lambda: gemm.gemm(A, B, transpose_b=True), a64 @ b64.T),
        (f"gemm {n}^3 tn", lambda: gemm.gemm(A, B, transpose_a=True), a64.T @ b64),
    ]
    devices = ["numpy", "sim"] + (["cuda"] if cupycnn.cuda_available() else [])
    print(f"{'op':<16}" + "".join(f"{d + ' err':>14}{d + ' ms':>11}" for d in devices))
    results = {}
    for device in devices:
        cupycnn.use(device)
        A, B, X = cupycnn.asarray(a), cupycnn.asarray(b), cupycnn.asarray(x)
        for name, fn, ref in cases:
            out, seconds = timed(fn)
            results[(name, device)] = (rel_err(out, ref), seconds * 1e3)
    for name, _, _ in cases:
        row = "".join(f"{results[(name, d)][0]:>14.2e}{results[(name, d)][1]:>11.2f}" for d in devices)
        print(f"{name:<16}{row}")

    # The same two-layer network on each device: identical initialisation, matching outputs.
    print("\nDense(64, 32) -> ReLU -> Dense(32, 10), forward and backward:")
    inputs = rng.standard_normal((16, 64)).astype(np.float32)
    dy = rng.standard_normal((16, 10)).astype(np.float32)
    outputs = {}
    for device in devices:
        cupycnn.use(device)
        cupycnn.manual_seed(0)
        net = [Dense(64, 32), ReLU(), Dense(32, 10)]
        h = cupycnn.asarray(inputs)
        for layer in net:
            h = layer.forward(h)
        g = cupycnn.asarray(dy)
        for layer in reversed(net):
            g = layer.backward(g)
        outputs[device] = (cupycnn.asnumpy(h), cupycnn.asnumpy(g))
    for device in devices:
        y_err = rel_err(outputs[device][0], outputs["numpy"][0].astype(np.float64))
        g_err = rel_err(outputs[device][1], outputs["numpy"][1].astype(np.float64))
        print(f"  {device:<6} output vs numpy {y_err:.1e}, input gradient vs numpy {g_err:.1e}")


if __name__ == "__main__":
    main()

"""Tile configurations of the tensor-core kernels (kernels/tc_tile.cuh, gemm_tc.cu,
conv2d_tc.cu): the one place they are written down. A configuration becomes the kernels'
-D defines (runtime.get_kernel(..., defines=...)), so each is its own compiled module, cached
per configuration on both devices; benchmarks/kernel_report.py compiles every one.

    TcTile(bm, bn, bk, warps_m, warps_n, stages, min_blocks, min_blocks_backward)
        a block computes a bm x bn tile of the product with warps_m x warps_n warps (each a
        bm/warps_m x bn/warps_n sub-tile of 16 x 8 mma tiles, FP32 accumulators in registers),
        reducing bk at a time through a `stages`-deep cp.async pipeline in shared memory of
        stages (bm + bn) bk 4 bytes (static, so at most 48 KiB; unpadded: the tile's swizzle
        keeps it free of bank conflicts). min_blocks: the resident blocks per SM the forward
        convolution and the GEMMs ask ptxas for (__launch_bounds__: registers at most
        65536 / (min_blocks threads)); min_blocks_backward: the same for the convolution's two
        gradients, which keep more coordinates per thread (the small tile's were at 3 until
        their row offsets were narrowed and the bf16 elements held two to a register). Each is
        the most that compiles without a spill (tests/test_kernel_report.py); without them
        ptxas gave the small tile's forward convolution and GEMMs up to 166 registers (3 blocks
        of 128 threads per SM) and the large tile's bf16 forward convolution 157 (1 block of
        256): see docs/BENCHMARKS.md.

Per shape (choose_tile): the big tile (fewer blocks, more reuse of each loaded element: 2 bm bn /
(bm + bn) FLOP per copied float) when it still gives at least MIN_WAVES waves of blocks over the
SM_COUNT SMs of an H100/H200 (ops/_launch.py), else the small one, so a small product still
fills the GPU.
"""
import contextlib
from dataclasses import dataclass

from ..reference.rounding import check_precision
from ..runtime import ceil_div
from ._launch import SM_COUNT

MIN_WAVES = 2


@dataclass(frozen=True)
class TcTile:
    bm: int
    bn: int
    bk: int
    warps_m: int
    warps_n: int
    stages: int
    min_blocks: int
    min_blocks_backward: int

    @property
    def threads(self):
        return 32 * self.warps_m * self.warps_n

    @property
    def shared_bytes(self):
        return self.stages * (self.bm + self.bn) * self.bk * 4

    @property
    def name(self):
        return f"{self.bm}x{self.bn}x{self.bk}_w{self.warps_m}x{self.warps_n}_s{self.stages}"

    def defines(self, precision):
        """The -D defines of this tile at precision "tf32" or "bf16"."""
        if check_precision(precision) == "fp32":
            raise ValueError("the tensor-core kernels run at tf32 or bf16, not fp32")
        return (("TC_BM", self.bm), ("TC_BN", self.bn), ("TC_BK", self.bk),
                ("TC_WARPS_M", self.warps_m), ("TC_WARPS_N", self.warps_n),
                ("TC_STAGES", self.stages), ("TC_BF16", int(precision == "bf16")),
                ("TC_MIN_BLOCKS", self.min_blocks),
                ("TC_MIN_BLOCKS_BACKWARD", self.min_blocks_backward))


LARGE = TcTile(128, 64, 16, 4, 2, 4, 2, 2)    # 256 threads, warp tile 32 x 32, 48 KiB
SMALL = TcTile(64, 64, 16, 2, 2, 4, 4, 4)     # 128 threads, warp tile 32 x 32, 32 KiB
TILES = (LARGE, SMALL)


_forced = None

# The kernel files built on tc_tile.cuh: each compiles once per (tile, precision).
TC_FILES = ("conv2d_tc", "gemm_tc")


def choose_tile(m, n, batch=1):
    """The tile for an m x n product (times `batch` independent ones, or stride phases)."""
    if _forced is not None:
        return _forced
    if ceil_div(m, LARGE.bm) * ceil_div(n, LARGE.bn) * batch >= MIN_WAVES * SM_COUNT:
        return LARGE
    return SMALL


@contextlib.contextmanager
def use_tile(tile):
    """Run every tensor-core product in the block with `tile` (tests, benchmarks)."""
    global _forced
    previous, _forced = _forced, tile
    try:
        yield tile
    finally:
        _forced = previous


def variants(file):
    """Every set of defines kernels/<file>.cu is compiled with: one per tile and precision for
    the tensor-core files, the empty set for the others."""
    if file not in TC_FILES:
        return [()]
    return [tile.defines(p) for tile in TILES for p in ("tf32", "bf16")]

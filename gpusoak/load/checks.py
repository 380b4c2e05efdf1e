"""The load's work and its checks, over an array module ``xp`` (cupy on a GPU, numpy on the CPU):
one implementation for both, driven through a ``Backend`` that owns synchronisation and the one
way results cross to the host.

**The window.** The load runs *batches* back to back until its window ends: each batch is one
kind of work queued on the device with no host synchronisation inside it: ``reps`` products of
one GEMM kind, each compared on the device, or a slice of the VRAM chunks re-verified and
rewritten. A batch ends with a small vector of counts; the host reads it (one transfer, one wait
on the batch's end event) only after the *next* batch is queued, so the device never waits for
the host between batches. Kinds alternate (fp16, fp16-exact, bf16, bf16-exact, fp32, fp32-exact,
VRAM, then again), and every batch's device time is measured by a pair of events: the figures are
work over the time the batches took (checks included), and the busy share is that time over the
window's wall time.

**GEMM checks** (no host product anywhere):

- *Exact kinds*: inputs in {-1, 0, 1}, A n x k, B k x n. Every partial sum is an integer of
  magnitude <= k, and the device accumulates in fp32 (24-bit significand; cuBLAS's fp16 and bf16
  GEMMs through cupy use fp32 compute), so the product is exact as long as the *output* dtype
  holds every integer up to k: fp16 (11-bit significand) up to 2048, bf16 (8-bit) only up to 256,
  fp32 up to 2**24. So ``EXACT_K`` is 2048 for fp16 and fp32 and 256 for bf16 (bf16 output, not
  fp32 output). Each product is compared for equality with the batch's first product, and the
  batch's first and last products are tested by Freivalds' method in float64: C r == A (B r) and
  s C == (s A) B for fresh random sign vectors r, s. Every quantity there is an integer below
  n * k <= 2**53, so float64 computes it exactly and the test is an equality: a single wrong
  element (any size, even +-1) changes exactly one entry of C r and one of s C, which also gives
  its row and column. Several wrong elements in one row cancel in C r only when their signed sum
  is zero, at most half of the sign vectors (Freivalds 1977), and r, s are drawn afresh per batch.
- *Random kinds* (the power load: uniform inputs in [-1, 1)): each product is compared with the
  batch's first product within ``RTOL`` (cuBLAS gives bit-wise identical results run to run on
  one GPU, but a kernel choice may sum in another order: a tolerance, not equality), and NaN or
  Inf anywhere is a mismatch. The first and last products are tested by Freivalds in float64 against a
  rigorous bound: with fp32 accumulation of k exact products, each element's error is at most
  u_out |C_ij| + g_k (|A||B|)_ij, g_k = k u / (1 - k u) (Higham, Accuracy and Stability of
  Numerical Algorithms, 2nd ed., section 3.5), u = 2**-23 (one ulp, since tensor cores may
  truncate rather than round: Fasi et al., "Numerical behavior of NVIDIA tensor cores", PeerJ CS
  2021) and u_out the output's unit roundoff, so |(C r)_i - (A (B r))_i| <= u_out (|C| 1)_i +
  g_k (|A| (|B| 1))_i, doubled for slack. That bound is loose (at n = k = 8192 it passes errors of
  a few times 10**4 in one element): it catches gross damage, and the exact kinds are the
  exactness test. TF32 (fp32 inputs rounded to a 10-bit mantissa) adds 2 * 2**-11 to g_k.

**VRAM**: chunks are allocated once and stay allocated for the whole window (the pressure); each
holds a pattern that is a function of the global word index (address, walking ones, seeded hash),
so a chunk is checked alone. A VRAM batch verifies a slice of chunks against the pattern each was
last written with, then rewrites each with the next pattern; a final pass verifies every chunk, so
every write is read back at least once.

``tamper`` (a product) and ``corrupt`` (a chunk after its write) let tests damage real results.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# The largest k for which an exact product's every element is exact in the output dtype (above).
EXACT_K = {"float16": 2048, "bfloat16": 256, "float32": 2048}
# Unit roundoff of each output dtype (2**-(significand bits)).
U_OUT = {"float16": 2.0 ** -11, "bfloat16": 2.0 ** -8, "float32": 2.0 ** -24}
U_ACC = 2.0 ** -23  # fp32 accumulation, one ulp (truncation allowed)
TF32_INPUT = 2 * 2.0 ** -11  # both inputs rounded to TF32's 10-bit mantissa
SLACK = 2.0
# Random products against the batch's first: |c - c0| <= ATOL + RTOL |c0|.
RTOL = {"float32": 1e-4, "float16": 2e-2, "bfloat16": 2e-2}
ATOL = 1e-3
DTYPES = ("float16", "bfloat16", "float32")
BLOCK_ROWS = 1024  # float64 temporaries of the checks are cast this many rows at a time


@dataclass(frozen=True)
class Kind:
    dtype: str
    exact: bool

    @property
    def name(self) -> str:
        return f"{self.dtype}-exact" if self.exact else self.dtype


class HostBackend:
    """The CPU path (numpy): everything is synchronous, events are host clock readings, and a
    fetch is a copy. device.CudaBackend is the GPU's."""

    oom: tuple[type[BaseException], ...] = (MemoryError,)

    def __init__(self, xp: Any = np) -> None:
        self.xp = xp
        self.name = "cpu (numpy)"

    def dtype(self, name: str) -> Any | None:
        """The array module's dtype, or None where it has none (numpy has no bfloat16)."""
        try:
            return self.xp.dtype(name)
        except TypeError:
            return None

    def mark(self) -> Any:
        return time.perf_counter()

    def elapsed_s(self, start: Any, end: Any) -> float:
        return end - start

    def wait(self, event: Any) -> None:  # noqa: ARG002 - numpy is already done
        return None

    def sync(self) -> None:
        return None

    def fetch(self, arr: Any, after: Any = None) -> np.ndarray:  # noqa: ARG002
        return np.asarray(arr)


# -- results ---------------------------------------------------------------------------------------
@dataclass
class GemmResult:
    dtype: str
    exact: bool
    n: int
    k: int
    products: int = 0
    batches: int = 0
    device_s: float = 0.0  # the batches' time on the device, checks included
    mismatches: int = 0  # elements differing from the batch's first product
    freivalds_rows: int = 0  # rows whose C r missed A (B r)
    freivalds_cols: int = 0
    first_bad: list[int] | None = None  # [product, row, col] of the first wrong element found

    @property
    def kind(self) -> str:
        return Kind(self.dtype, self.exact).name

    @property
    def flops(self) -> float:
        return 2.0 * self.n * self.n * self.k * self.products

    @property
    def tflops(self) -> float:
        return self.flops / self.device_s / 1e12 if self.device_s > 0 else 0.0

    @property
    def wrong(self) -> int:
        return self.mismatches + self.freivalds_rows + self.freivalds_cols


@dataclass
class VramResult:
    bytes_requested: int
    bytes_total: int = 0  # what was allocated and kept filled
    chunks: int = 0
    backed_off: bool = False  # allocation stopped early (out of memory)
    verifies: int = 0  # chunk verifications over the window
    mismatched_words: int = 0
    first_bad_word: int | None = None  # global word index of the first mismatch
    fill_gbps: float = 0.0  # the first fill of every chunk: writes only
    gbps: float = 0.0  # the batches' reads and rewrites over their device time
    device_s: float = 0.0
    patterns: list[str] = field(default_factory=list)

    @property
    def passes(self) -> float:
        return self.verifies / self.chunks if self.chunks else 0.0


@dataclass
class WindowResult:
    seconds: float = 0.0  # wall time from the first batch queued to the last read
    setup_s: float = 0.0  # operands and the first fill, before the window
    batches: int = 0
    busy_s: float = 0.0  # the batches' device time
    gemm: list[GemmResult] = field(default_factory=list)
    vram: VramResult | None = None
    unavailable: dict[str, str] = field(default_factory=dict)  # kind: why it did not run

    @property
    def busy_share(self) -> float:
        return min(1.0, self.busy_s / self.seconds) if self.seconds > 0 else 0.0

    @property
    def wrong(self) -> int:
        return sum(g.wrong for g in self.gemm) + (self.vram.mismatched_words if self.vram else 0)


@dataclass(frozen=True)
class Plan:
    n: int
    vram_bytes: int
    chunk_bytes: int
    kinds: tuple[Kind, ...] = tuple(Kind(d, e) for d in DTYPES for e in (False, True))
    target_batch_s: float = 0.25  # how long a batch should keep the device busy
    max_reps: int = 64
    tf32: bool = False

    def k(self, kind: Kind) -> int:
        return min(self.n, EXACT_K[kind.dtype]) if kind.exact else self.n


# -- generated inputs (on the device, from the hash below: nothing uploaded) ---------------------
PATTERNS = ("address", "walking_ones", "random")


def expected(xp: Any, name: str, words: int, base: int, seed: int) -> Any:
    """Pattern ``name`` for words ``base .. base+words-1``: a function of the global word index g,
    so any chunk can be written and checked alone (no second copy of the memory under test): the
    address itself, a walking one, and a seeded hash (murmur3's 32-bit finaliser of g ^ seed).
    device.py has the same three as single-pass CUDA kernels."""
    g = xp.arange(base, base + words, dtype=xp.uint64).astype(xp.uint32)  # wraps past 2**32 words
    if name == "address":
        return g
    if name == "walking_ones":
        return xp.left_shift(xp.uint32(1), g % xp.uint32(32)).astype(xp.uint32)
    if name == "random":
        h = g ^ xp.uint32(seed & 0xFFFFFFFF)
        h ^= h >> xp.uint32(16)
        h *= xp.uint32(0x85EBCA6B)
        h ^= h >> xp.uint32(13)
        h *= xp.uint32(0xC2B2AE35)
        h ^= h >> xp.uint32(16)
        return h
    raise ValueError(name)


def _operand(xp: Any, shape: tuple[int, int], exact: bool, seed: int, dt: Any) -> Any:
    h = expected(xp, "random", shape[0] * shape[1], 0, seed)
    if exact:
        v = (h % xp.uint32(3)).astype(xp.float32) - xp.float32(1)  # {-1, 0, 1}
    else:
        v = h.astype(xp.float32) * xp.float32(2.0 ** -31) - xp.float32(1)  # [-1, 1)
    return v.reshape(shape).astype(dt)


def _signs(xp: Any, n: int, seed: int) -> Any:
    """A random +-1 vector in float64, made on the device."""
    bit = (expected(xp, "random", n, 0, seed) >> xp.uint32(7)) & xp.uint32(1)
    return xp.float64(1) - xp.float64(2) * bit.astype(xp.float64)


# -- GEMM ------------------------------------------------------------------------------------------
class _Gemm:
    """One kind's operands and its batches."""

    def __init__(self, be: HostBackend, plan: Plan, kind: Kind, seed: int,
                 compare: Callable[..., tuple[Any, Any]] | None = None) -> None:
        xp = self.xp = be.xp
        self.kind, self.plan = kind, plan
        self.compare = compare or (lambda c, c0, exact, rtol: generic_compare(xp, c, c0, exact, rtol))
        dt = be.dtype(kind.dtype)
        n, k = plan.n, plan.k(kind)
        self.a = _operand(xp, (n, k), kind.exact, seed, dt)
        self.b = _operand(xp, (k, n), kind.exact, seed + 1, dt)
        self.c = xp.empty((n, n), dtype=dt)
        self.c0 = xp.empty((n, n), dtype=dt)
        self.result = GemmResult(kind.dtype, kind.exact, n, k)
        if not kind.exact:
            # |A| (|B| 1) and (1 |A|) |B|: the bound's input term, fixed for the window.
            ones = xp.ones(n, dtype=xp.float64)
            self.row_mag = _matvec(xp, xp.abs(self.a), _matvec(xp, xp.abs(self.b), ones))
            self.col_mag = _vecmat(xp, _vecmat(xp, xp.ones(n, dtype=xp.float64), xp.abs(self.a)), xp.abs(self.b))
            self.g = k * U_ACC / (1 - k * U_ACC) + (TF32_INPUT if plan.tf32 and kind.dtype == "float32" else 0.0)
        self.seed = seed

    def enqueue(self, reps: int, batch: int, tamper: Callable[[Any, int], None] | None) -> tuple[Any, int]:
        """Queue ``reps`` products and their checks; returns the device vector of counts (read
        once, after the batch) and how many products it holds. Nothing here reads the device."""
        xp, r = self.xp, self.result
        counts = []
        for rep in range(reps):
            target = self.c0 if rep == 0 else self.c
            xp.matmul(self.a, self.b, out=target)
            if tamper is not None:
                tamper(target, r.products + rep)
            if rep > 0:
                counts += self.compare(self.c, self.c0, self.kind.exact, RTOL[self.kind.dtype])
        # Freivalds on the first product (what the others were compared with) and on the last.
        counts += self._freivalds(self.c0, self.seed * 7919 + 2 * batch)
        counts += self._freivalds(self.c if reps > 1 else self.c0, self.seed * 7919 + 2 * batch + 1)
        return xp.stack(counts), reps

    def settle(self, values: np.ndarray, reps: int, first_product: int) -> None:
        """Add one batch's counts (host values) to the result, and where the first wrong element
        was: [product, row, col] (-1 where Freivalds gives only a row or a column)."""
        r, n = self.result, self.plan.n
        pairs = values[: 2 * (reps - 1)].reshape(-1, 2)
        tests = values[2 * (reps - 1):].reshape(2, 4)
        first_wrong = tests[0][0] or tests[0][2]
        for j, (rows_bad, row_at, cols_bad, col_at) in enumerate(tests):
            if j == 1 and reps == 1:
                break  # the same product, tested twice
            r.freivalds_rows += int(rows_bad)
            r.freivalds_cols += int(cols_bad)
            if (rows_bad or cols_bad) and r.first_bad is None:
                r.first_bad = [first_product + (0 if j == 0 else reps - 1), int(row_at) if rows_bad else -1,
                               int(col_at) if cols_bad else -1]
        if first_wrong:
            return  # the others were compared with a wrong product: those comparisons say nothing
        for i, (bad, at) in enumerate(pairs):
            r.mismatches += int(bad)
            if bad and r.first_bad is None:
                r.first_bad = [first_product + 1 + i, int(at) // n, int(at) % n]

    def _freivalds(self, c: Any, seed: int) -> list[Any]:
        """[rows missed, first such row, columns missed, first such column], as device scalars."""
        xp, n = self.xp, self.plan.n
        r, s = _signs(xp, n, seed), _signs(xp, n, seed ^ 0x5BD1E995)
        cr, sc, c_rows, c_cols = _passes(xp, c, r, s, need_abs=not self.kind.exact)
        want_r = _matvec(xp, self.a, _matvec(xp, self.b, r))
        want_s = _vecmat(xp, _vecmat(xp, s, self.a), self.b)
        if self.kind.exact:
            bad_r, bad_s = cr != want_r, sc != want_s
        else:
            u = U_OUT[self.kind.dtype]
            tol_r = SLACK * (u * c_rows + self.g * self.row_mag)
            tol_s = SLACK * (u * c_cols + self.g * self.col_mag)
            bad_r = (xp.abs(cr - want_r) > tol_r) | ~xp.isfinite(cr)
            bad_s = (xp.abs(sc - want_s) > tol_s) | ~xp.isfinite(sc)
        return [bad_r.sum(dtype=xp.int64), xp.argmax(bad_r).astype(xp.int64),
                bad_s.sum(dtype=xp.int64), xp.argmax(bad_s).astype(xp.int64)]


def generic_compare(xp: Any, c: Any, c0: Any, exact: bool, rtol: float) -> tuple[Any, Any]:
    """(elements of ``c`` that differ from ``c0``, flat index of the first), as device scalars.
    Exact kinds: equality; random kinds: |c - c0| <= ATOL + rtol |c0|, and NaN or Inf differs.
    device.py has it as one fused kernel (one read of each product)."""
    if exact:
        bad = c != c0
    else:
        c32, r32 = c.astype(xp.float32), c0.astype(xp.float32)
        bad = (xp.abs(c32 - r32) > (ATOL + rtol * xp.abs(r32))) | ~xp.isfinite(c32)
    return bad.sum(dtype=xp.int64), xp.argmax(bad).astype(xp.int64)


def _matvec(xp: Any, m: Any, v: Any) -> Any:
    """m @ v in float64, casting m a block of rows at a time."""
    parts = [m[i:i + BLOCK_ROWS].astype(xp.float64) @ v for i in range(0, m.shape[0], BLOCK_ROWS)]
    return parts[0] if len(parts) == 1 else xp.concatenate(parts)


def _vecmat(xp: Any, v: Any, m: Any) -> Any:
    """v @ m in float64, casting m a block of rows at a time."""
    out = None
    for i in range(0, m.shape[0], BLOCK_ROWS):
        part = v[i:i + BLOCK_ROWS] @ m[i:i + BLOCK_ROWS].astype(xp.float64)
        out = part if out is None else out + part
    return out


def _passes(xp: Any, c: Any, r: Any, s: Any, need_abs: bool) -> tuple[Any, Any, Any, Any]:
    """One pass over C (float64 a block at a time): C r, s C, and for the bound |C| 1 and 1 |C|."""
    cr, sc, rows, cols = [], None, [], None
    for i in range(0, c.shape[0], BLOCK_ROWS):
        blk = c[i:i + BLOCK_ROWS].astype(xp.float64)
        cr.append(blk @ r)
        part = s[i:i + BLOCK_ROWS] @ blk
        sc = part if sc is None else sc + part
        if need_abs:
            a = xp.abs(blk)
            rows.append(a.sum(axis=1))
            col = a.sum(axis=0)
            cols = col if cols is None else cols + col
    def join(p: list[Any]) -> Any:
        return p[0] if len(p) == 1 else xp.concatenate(p)

    return join(cr), sc, (join(rows) if need_abs else None), cols


# -- VRAM ------------------------------------------------------------------------------------------
def generic_fill(xp: Any, buf: Any, name: str, base: int, seed: int) -> None:
    buf[...] = expected(xp, name, buf.size, base, seed)


def generic_count(xp: Any, buf: Any, name: str, base: int, seed: int) -> tuple[Any, Any]:
    """(words that differ from the pattern, index of the first in the chunk), as device scalars."""
    bad = buf != expected(xp, name, buf.size, base, seed)
    return bad.sum(dtype=xp.int64), xp.argmax(bad).astype(xp.int64)


class _Vram:
    def __init__(self, be: HostBackend, plan: Plan, seed: int, corrupt: Callable[[Any, int], None] | None,
                 fill: Callable[..., None] | None, count: Callable[..., tuple[Any, Any]] | None) -> None:
        xp = self.xp = be.xp
        self.seed, self.corrupt = seed, corrupt
        self.fill = fill or (lambda buf, name, base, sd: generic_fill(xp, buf, name, base, sd))
        self.count = count or (lambda buf, name, base, sd: generic_count(xp, buf, name, base, sd))
        self.result = VramResult(bytes_requested=plan.vram_bytes, patterns=list(PATTERNS))
        self.words = max(1, plan.chunk_bytes // 4)
        self.chunks: list[Any] = []
        while self.result.bytes_total + 4 * self.words <= plan.vram_bytes:
            try:
                self.chunks.append(xp.empty(self.words, dtype=xp.uint32))
            except be.oom:
                self.result.backed_off = True
                break
            self.result.bytes_total += 4 * self.words
        self.result.chunks = len(self.chunks)
        self.pattern = [0] * len(self.chunks)  # index into PATTERNS each chunk holds
        self.next = 0  # the next chunk a batch verifies

    def first_fill(self) -> None:
        for i, buf in enumerate(self.chunks):
            self._write(i, buf, 0)

    def _write(self, i: int, buf: Any, pattern: int) -> None:
        self.pattern[i] = pattern
        self.fill(buf, PATTERNS[pattern], i * self.words, self.seed)
        if self.corrupt is not None:
            self.corrupt(buf, i)

    def enqueue(self, count: int, rewrite: bool = True) -> tuple[Any, list[int]]:
        """Verify ``count`` chunks (the next ones, round the list) and rewrite each with its next
        pattern. Returns the device counts ([mismatches, first bad index] per chunk) and which."""
        xp, out, which = self.xp, [], []
        for _ in range(min(count, len(self.chunks))):
            i = self.next
            self.next = (self.next + 1) % len(self.chunks)
            buf = self.chunks[i]
            out += self.count(buf, PATTERNS[self.pattern[i]], i * self.words, self.seed)
            if rewrite:
                self._write(i, buf, (self.pattern[i] + 1) % len(PATTERNS))
            which.append(i)
        return xp.stack(out), which

    def settle(self, values: np.ndarray, which: Sequence[int]) -> None:
        r = self.result
        for i, (bad, at) in zip(which, values.reshape(-1, 2), strict=True):
            r.verifies += 1
            if bad:
                r.mismatched_words += int(bad)
                if r.first_bad_word is None:
                    r.first_bad_word = i * self.words + int(at)


@dataclass(frozen=True)
class Kernels:
    """Fused device kernels standing in for the array expressions (device.pattern_kernels)."""
    fill: Callable[..., None] | None = None
    count: Callable[..., tuple[Any, Any]] | None = None
    compare: Callable[..., tuple[Any, Any]] | None = None


def _warm_up(be: HostBackend, gemms: Sequence[_Gemm], vram: _Vram) -> None:
    """Run every kind once before the window, results discarded: the first call of a cupy kernel
    compiles it on the host (NVRTC) while the device waits, which would read as busy time."""
    for g in gemms:
        counts, _ = g.enqueue(2, -1, None)
        be.fetch(counts)
    if vram.chunks:
        counts, _ = vram.enqueue(1, rewrite=False)
        be.fetch(counts)
        vram.next = 0


# -- the window ------------------------------------------------------------------------------------
@dataclass
class _Batch:
    work: Any  # _Gemm or _Vram
    counts: Any  # the device vector
    start: Any
    end: Any
    size: int  # products, or chunks
    extra: Any  # first product number, or the chunks verified
    bytes_moved: int = 0


def window(be: HostBackend, plan: Plan, seconds: float, seed: int = 1,
           tamper: Callable[[Any, int], None] | None = None, corrupt: Callable[[Any, int], None] | None = None,
           kernels: Kernels | None = None, only: Sequence[str] | None = None) -> WindowResult:
    """Load for ``seconds`` (at least one batch of every kind, then a final VRAM pass) and check
    everything. ``kernels`` are device.py's fused ones (None: the array expressions here).
    ``only`` restricts the GEMM kinds (by name) for tests. An operand that does not fit (out of
    memory) leaves its kind out, with the reason."""
    k = kernels or Kernels()
    out = WindowResult()
    t0 = time.perf_counter()
    gemms: list[_Gemm] = []
    for i, kind in enumerate(plan.kinds):
        if only is not None and kind.name not in only:
            continue
        if be.dtype(kind.dtype) is None:
            out.unavailable[kind.name] = f"the array module ({be.name}) has no {kind.dtype} dtype"
            continue
        try:
            gemms.append(_Gemm(be, plan, kind, seed + 10 * i, k.compare))
        except be.oom as err:
            out.unavailable[kind.name] = f"its operands did not fit: {type(err).__name__}"
    vram = _Vram(be, plan, seed, corrupt, k.fill, k.count)
    _warm_up(be, gemms, vram)
    start = be.mark()
    vram.first_fill()
    end = be.mark()
    be.wait(end)
    fill_s = be.elapsed_s(start, end)
    vram.result.fill_gbps = vram.result.bytes_total / fill_s / 1e9 if fill_s > 0 else 0.0
    out.setup_s = time.perf_counter() - t0

    per_unit: dict[int, float] = {}  # seconds per product (or per chunk), by work item
    size: dict[int, int] = {}
    moved = 0

    def queue(work: Any, batch: int) -> _Batch:
        n = size.get(id(work), 1)
        s = be.mark()
        if isinstance(work, _Gemm):
            counts, _ = work.enqueue(n, batch, tamper)
            extra = work.result.products
            work.result.products += n
            b = _Batch(work, counts, s, be.mark(), n, extra)
        else:
            counts, which = work.enqueue(n)
            b = _Batch(work, counts, s, be.mark(), n, which, bytes_moved=8 * work.words * len(which))
        return b

    def settle(b: _Batch) -> None:
        nonlocal moved
        values = be.fetch(b.counts, b.end)  # waits on the batch's end event: the one transfer
        took = be.elapsed_s(b.start, b.end)
        out.busy_s += took
        out.batches += 1
        if isinstance(b.work, _Gemm):
            b.work.settle(values, b.size, b.extra)
            b.work.result.device_s += took
            b.work.result.batches += 1
        else:
            b.work.settle(values, b.extra)
            vram.result.device_s += took
            moved += b.bytes_moved
        unit = took / max(1, b.size)
        per_unit[id(b.work)] = unit
        cap = plan.max_reps if isinstance(b.work, _Gemm) else max(1, len(vram.chunks))
        size[id(b.work)] = max(1, min(cap, int(plan.target_batch_s / unit) if unit > 0 else cap))

    order: list[Any] = [*gemms, *([vram] if vram.chunks else [])]
    w0 = time.perf_counter()
    deadline = w0 + seconds
    pending: _Batch | None = None
    batch = 0
    while order:
        work = order[batch % len(order)]
        queued = queue(work, batch)
        if pending is not None:
            settle(pending)
        pending = queued
        batch += 1
        if batch >= len(order) and time.perf_counter() >= deadline:
            break
    if pending is not None:
        settle(pending)
    if vram.chunks:  # every chunk's last write read back
        s = be.mark()
        counts, which = vram.enqueue(len(vram.chunks), rewrite=False)
        settle(_Batch(vram, counts, s, be.mark(), len(which), which, bytes_moved=4 * vram.words * len(which)))
    out.seconds = time.perf_counter() - w0
    vram.result.gbps = moved / vram.result.device_s / 1e9 if vram.result.device_s > 0 else 0.0
    out.gemm = [g.result for g in gemms]
    out.vram = vram.result
    return out


def figures(result: WindowResult) -> dict[str, Any]:
    """The window as the load's JSON document carries it."""
    def gemm(g: GemmResult) -> dict[str, Any]:
        return {"kind": g.kind, "dtype": g.dtype, "exact": g.exact, "n": g.n, "k": g.k, "products": g.products,
                "batches": g.batches, "device_s": round(g.device_s, 6), "tflops": _sig(g.tflops),
                "mismatches": g.mismatches, "freivalds_rows": g.freivalds_rows, "freivalds_cols": g.freivalds_cols,
                "first_bad": g.first_bad}

    v = result.vram
    vram = None if v is None else {
        "bytes_requested": v.bytes_requested, "bytes_total": v.bytes_total, "chunks": v.chunks,
        "backed_off": v.backed_off, "verifies": v.verifies, "passes": round(v.passes, 2),
        "mismatched_words": v.mismatched_words, "first_bad_word": v.first_bad_word,
        "fill_gbps": _sig(v.fill_gbps), "gbps": _sig(v.gbps), "device_s": round(v.device_s, 6),
        "patterns": v.patterns}
    return {"window": {"seconds": round(result.seconds, 6), "setup_s": round(result.setup_s, 6),
                       "batches": result.batches, "busy_s": round(result.busy_s, 6),
                       "busy_share": round(result.busy_share, 4), "unavailable": result.unavailable},
            "gemm": [gemm(g) for g in result.gemm], "vram": vram}


def _sig(x: float, digits: int = 4) -> float:
    """``x`` to ``digits`` significant figures (a CPU's TFLOP/s are small, a GPU's large)."""
    return float(f"{x:.{digits}g}")


def square_size(free_bytes: int, sm_count: int | None = None) -> int:
    """The GEMM size for a device: 8192 where memory allows (a 8192 x 8192 product in 128 x 256
    tiles is 2048 tiles, many per SM on any GPU here), halved until every kind's operands
    (about 22 n**2 bytes with float64 check temporaries) take at most a tenth of free memory."""
    n = 8192
    while n > 256 and 22 * n * n > free_bytes / 10:
        n //= 2
    if sm_count:
        n = max(n, 256 * 2 ** math.ceil(math.log2(max(1.0, math.sqrt(sm_count) / 8))))
    return n

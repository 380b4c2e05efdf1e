"""GEMM and VRAM checks over an array module ``xp`` (numpy or cupy): one implementation for both.

GEMM: a product of random matrices is computed once as the reference and every repetition must
reproduce it (within a tolerance); an integer-valued product, exactly representable in the dtype, is compared with an
exact integer reference computed on the host. VRAM: a fraction of free memory is filled in chunks
with three patterns (address-derived, walking ones, seeded random), read back and compared.
``tamper`` and ``corrupt`` let tests damage a real result or buffer to prove detection.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

# fp16 holds every integer up to 2048 exactly; with entries in {-1, 0, 1} a dot product of length
# k is at most k in magnitude, so k <= 2048 keeps the exact check exact in fp16 too.
EXACT_K_MAX = 2048


@dataclass
class GemmResult:
    dtype: str
    n: int
    reps: int = 0
    seconds: float = 0.0
    mismatches: int = 0  # elements differing from the first product (random inputs)
    exact_mismatches: int = 0  # elements differing from the exact integer product

    @property
    def tflops(self) -> float:
        return 2.0 * self.n ** 3 * self.reps / self.seconds / 1e12 if self.seconds > 0 else 0.0


@dataclass
class VramResult:
    bytes_requested: int
    bytes_total: int = 0  # what was allocated and checked
    chunks: int = 0
    backed_off: bool = False  # allocation stopped early (out of memory)
    mismatched_words: int = 0
    write_gbps: float = 0.0
    read_gbps: float = 0.0
    patterns: list[str] = field(default_factory=list)


def gemm(xp: Any, n: int, dtype: str, seconds: float, sync: Callable[[], None], seed: int = 1,
         tamper: Callable[[Any, int], None] | None = None, exact_k: int | None = None) -> GemmResult:
    """Repeated n x n products for ``seconds``; every product checked. ``tamper(C, rep)`` may alter
    one. The exact product is (n x k) @ (k x n) with k = ``exact_k`` (default min(n, 2048))."""
    rng = np.random.default_rng(seed)
    dt = xp.dtype(dtype)
    out = GemmResult(dtype, n)
    a = xp.asarray(rng.standard_normal((n, n), dtype=np.float32)).astype(dt)
    b = xp.asarray(rng.standard_normal((n, n), dtype=np.float32)).astype(dt)
    reference = a @ b
    k = min(exact_k or n, EXACT_K_MAX)
    ai = rng.integers(-1, 2, size=(n, k)).astype(np.int64)
    bi = rng.integers(-1, 2, size=(k, n)).astype(np.int64)
    exact = ai @ bi  # on the host, in integers: the truth
    ax, bx = xp.asarray(ai.astype(np.float32)).astype(dt), xp.asarray(bi.astype(np.float32)).astype(dt)
    sync()
    deadline = time.perf_counter() + seconds
    while True:
        # Only the product is timed (TFLOP/s); the checks after it are not, but they are done
        # for every product.
        t = time.perf_counter()
        c = a @ b
        sync()
        out.seconds += time.perf_counter() - t
        if tamper is not None:
            tamper(c, out.reps)
        out.mismatches += _differing(xp, c, reference, dtype)
        out.reps += 1
        if out.reps % 4 == 1:  # the exact check costs a host copy: not on every repetition
            e = ax @ bx
            if tamper is not None:
                tamper(e, -out.reps)
            out.exact_mismatches += int((_host(xp, e).astype(np.int64) != exact).sum())
        if time.perf_counter() >= deadline:
            break
    return out


# cuBLAS may pick kernels that sum in a different order from one call to the next (split-K), so
# the random product is compared within a tolerance; the exact product is compared exactly.
RTOL = {"float32": 1e-4, "float16": 2e-2}


def _differing(xp: Any, c: Any, reference: Any, dtype: str) -> int:
    c32, r32 = c.astype(xp.float32), reference.astype(xp.float32)
    bad = xp.abs(c32 - r32) > (1e-3 + RTOL.get(dtype, 1e-4) * xp.abs(r32))
    return int(bad.sum()) + int((~xp.isfinite(c32)).sum())


def _host(xp: Any, arr: Any) -> np.ndarray:
    return arr.get() if hasattr(arr, "get") else np.asarray(arr)


# Patterns are functions of a word's global index g, so any chunk can be written and checked alone
# (no second copy of the memory under test): the address itself, a walking one, and a seeded hash
# (murmur3's 32-bit finaliser of g ^ seed). device.py has the same three as single-pass CUDA kernels.
PATTERNS = ("address", "walking_ones", "random")


def expected(xp: Any, name: str, words: int, base: int, seed: int) -> Any:
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


def generic_fill(xp: Any, buf: Any, name: str, base: int, seed: int) -> None:
    buf[...] = expected(xp, name, buf.size, base, seed)


def generic_count(xp: Any, buf: Any, name: str, base: int, seed: int) -> int:
    return int((buf != expected(xp, name, buf.size, base, seed)).sum())


def vram(xp: Any, total_bytes: int, chunk_bytes: int, sync: Callable[[], None], seed: int = 1,
         oom: tuple[type[BaseException], ...] = (MemoryError,),
         corrupt: Callable[[Any, int], None] | None = None,
         fill: Callable[..., None] | None = None, count: Callable[..., int] | None = None) -> VramResult:
    """Fill ``total_bytes`` in chunks with each pattern, read back, count mismatched 32-bit words.
    Out of memory is not an error: allocation backs off and the result says what was checked.
    ``fill``/``count`` default to array expressions (numpy, or cupy at a cost); device.py gives
    cupy single-pass kernels."""
    fill = fill or (lambda buf, name, base, sd: generic_fill(xp, buf, name, base, sd))
    count = count or (lambda buf, name, base, sd: generic_count(xp, buf, name, base, sd))
    out = VramResult(bytes_requested=total_bytes, patterns=list(PATTERNS))
    words_per_chunk = max(1, chunk_bytes // 4)
    chunks = []
    while out.bytes_total + 4 * words_per_chunk <= total_bytes:
        try:
            chunks.append(xp.empty(words_per_chunk, dtype=xp.uint32))
        except oom:
            out.backed_off = True
            break
        out.bytes_total += 4 * words_per_chunk
    out.chunks = len(chunks)
    write_s = read_s = 0.0
    for name in PATTERNS:
        sync()
        t = time.perf_counter()
        for i, buf in enumerate(chunks):
            fill(buf, name, i * words_per_chunk, seed)
        sync()
        write_s += time.perf_counter() - t
        if corrupt is not None:
            for i, buf in enumerate(chunks):
                corrupt(buf, i)
        t = time.perf_counter()
        for i, buf in enumerate(chunks):
            out.mismatched_words += count(buf, name, i * words_per_chunk, seed)
        sync()
        read_s += time.perf_counter() - t
    moved = out.bytes_total * len(PATTERNS)
    out.write_gbps = moved / write_s / 1e9 if write_s > 0 else 0.0
    out.read_gbps = moved / read_s / 1e9 if read_s > 0 else 0.0
    del chunks
    return out

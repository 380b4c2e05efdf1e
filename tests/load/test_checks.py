"""The load's checking code on numpy: the same code cupy runs on a GPU, at small sizes."""

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpusoak.load import checks

BE = checks.HostBackend()
KINDS = ["float16", "float16-exact", "float32", "float32-exact"]  # numpy has no bfloat16


def plan(n=32, vram=1 << 20, chunk=1 << 18, **kw):
    return checks.Plan(n=n, vram_bytes=vram, chunk_bytes=chunk, **kw)


def test_a_clean_window_checks_out_with_its_figures():
    r = checks.window(BE, plan(n=48, target_batch_s=0.01), 0.1)
    assert r.wrong == 0 and [g.kind for g in r.gemm] == KINDS
    assert all(g.products > g.batches >= 1 and g.tflops > 0 for g in r.gemm)  # batches hold several products
    assert r.vram.bytes_total == 1 << 20 and r.vram.chunks == 4 and r.vram.passes >= 1 and r.vram.fill_gbps > 0
    assert 0 < r.busy_share <= 1 and r.batches >= 5 and r.setup_s > 0
    # numpy has no bfloat16: the kind is named with its reason, not passed silently.
    assert set(r.unavailable) == {"bfloat16", "bfloat16-exact"} and "no bfloat16" in r.unavailable["bfloat16"]


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(kind=st.sampled_from(KINDS), product=st.integers(0, 20), row=st.integers(0, 31), col=st.integers(0, 31),
       sign=st.sampled_from([-1, 1]))
def test_a_wrong_element_anywhere_in_any_product_is_caught_where_it_is(kind, product, row, col, sign):
    # Exact kinds: the smallest possible error (+-1 on an integer product) is caught; random
    # kinds: an error beyond their tolerance. Products in a batch's middle are caught by the
    # comparison with its first product, a batch's first or last (or its only one) by Freivalds.
    exact = kind.endswith("exact")

    def tamper(c, index):
        if index == product:
            c[row, col] = c[row, col] + (sign if exact else sign * 1000)

    r = checks.window(BE, plan(target_batch_s=0.002, max_reps=8), 0.05, tamper=tamper, only=[kind])
    (g,) = r.gemm
    assert g.products > product, "the window must reach the tampered product"
    assert g.wrong >= 1 and r.wrong == g.wrong
    p, at_row, at_col = g.first_bad
    assert p == product and at_row in (row, -1) and at_col in (col, -1) and (at_row, at_col) != (-1, -1)


@pytest.mark.parametrize("kind", ["float16", "float32"])
def test_a_gross_error_in_a_products_only_check_is_caught_by_freivalds(kind):
    # One product per batch (a window of 0 s): no comparison, Freivalds' bound alone.
    for damage in (np.nan, np.inf, 3e4):
        def tamper(c, index, damage=damage):
            if index == 0:
                c[3, 5] = damage

        (g,) = checks.window(BE, plan(n=64), 0.0, tamper=tamper, only=[kind]).gemm
        assert (g.products, g.freivalds_rows, g.freivalds_cols, g.first_bad) == (1, 1, 1, [0, 3, 5]), damage


def test_freivalds_bound_holds_for_clean_random_products_at_a_larger_size():
    r = checks.window(BE, plan(n=256, vram=1 << 16, chunk=1 << 16), 0.0, only=["float16", "float32"])
    assert r.wrong == 0 and all(g.freivalds_rows == g.freivalds_cols == 0 for g in r.gemm)


def test_exact_k_is_what_each_output_dtype_holds():
    # Every integer up to 2**(significand bits) is exact: fp16 has 10 stored bits (+1), fp32 23;
    # bfloat16 7 (+1) = 256 (IEEE 754 binary16/binary32; bfloat16: Google's format, 8-bit exponent
    # and 7-bit mantissa). The products' entries are at most k in magnitude.
    assert checks.EXACT_K["float16"] <= 2 ** (np.finfo(np.float16).nmant + 1) == 2048
    assert checks.EXACT_K["float32"] <= 2 ** (np.finfo(np.float32).nmant + 1)
    assert checks.EXACT_K["bfloat16"] == 2 ** (7 + 1)
    assert float(np.float16(2048)) == 2048 and float(np.float16(2049)) != 2049  # one past is not exact
    assert plan(n=8192).k(checks.Kind("bfloat16", True)) == 256 and plan(n=8192).k(checks.Kind("float16", True)) == 2048
    assert plan(n=8192).k(checks.Kind("float16", False)) == 8192


@settings(max_examples=30, deadline=None)
@given(word=st.integers(0, (1 << 20) // 4 - 1), bit=st.integers(0, 31))
def test_a_flipped_bit_anywhere_in_vram_is_caught_at_its_word(word, bit):
    words_per_chunk = (1 << 18) // 4

    def corrupt(buf, index):
        if index == word // words_per_chunk:
            buf[word % words_per_chunk] ^= np.uint32(1 << bit)

    r = checks.window(BE, plan(), 0.0, corrupt=corrupt, only=[])
    assert r.vram.mismatched_words >= 1 and r.vram.first_bad_word == word and r.wrong == r.vram.mismatched_words


def test_every_write_is_read_back_and_vram_stays_full_through_the_window():
    r = checks.window(BE, plan(target_batch_s=0.001), 0.05, only=[])
    assert r.vram.verifies >= 2 * r.vram.chunks and r.vram.mismatched_words == 0  # rewritten, re-verified
    assert r.vram.gbps > 0 and r.vram.device_s > 0


def test_patterns_are_functions_of_the_global_word_index():
    assert list(checks.expected(np, "address", 4, 8, 1)) == [8, 9, 10, 11]
    w = checks.expected(np, "walking_ones", 40, 0, 1)
    assert list(w[:3]) == [1, 2, 4] and w[31] == 1 << 31 and w[32] == 1
    r = checks.expected(np, "random", 16, 0, 7)
    assert len(set(r.tolist())) == 16 and (r == checks.expected(np, "random", 16, 0, 7)).all()
    assert (r != checks.expected(np, "random", 16, 0, 8)).any()  # the seed matters
    whole = checks.expected(np, "random", 64, 0, 7)
    assert (whole[32:] == checks.expected(np, "random", 32, 32, 7)).all()


def test_the_hash_matches_murmur3s_finaliser():
    def fmix32(h):
        h ^= h >> 16
        h = (h * 0x85EBCA6B) & 0xFFFFFFFF
        h ^= h >> 13
        h = (h * 0xC2B2AE35) & 0xFFFFFFFF
        return h ^ (h >> 16)

    assert [int(x) for x in checks.expected(np, "random", 5, 100, 42)] == [fmix32(g ^ 42) for g in range(100, 105)]


class _ScarceNumpy:
    """numpy, but memory runs out after ``limit`` allocations of at least ``size`` bytes."""

    def __init__(self, limit, size):
        self.limit, self.size, self.allocations = limit, size, 0

    def __getattr__(self, name):
        return getattr(np, name)

    def empty(self, shape, dtype=None):
        a = np.empty(shape, dtype=dtype)
        if a.nbytes >= self.size:
            self.allocations += 1
            if self.allocations > self.limit:
                raise MemoryError("out of memory")
        return a


def _Scarce(limit, size):
    return checks.HostBackend(_ScarceNumpy(limit, size))


def test_out_of_memory_backs_off_and_says_what_it_got():
    r = checks.window(_Scarce(3, 1 << 18), plan(vram=1 << 21), 0.0, only=[])
    assert r.vram.backed_off and r.vram.chunks == 3 and r.vram.bytes_total == 3 << 18
    assert r.vram.bytes_requested == 1 << 21 and r.vram.mismatched_words == 0


def test_a_kind_whose_operands_do_not_fit_is_left_out_with_its_reason():
    r = checks.window(_Scarce(0, 64 * 64 * 2), plan(n=64, vram=0), 0.0, only=["float16"])
    assert r.gemm == [] and "did not fit" in r.unavailable["float16"]


def test_square_size_follows_free_memory():
    assert checks.square_size(80 << 30, 132) == 8192
    assert checks.square_size(4 << 30) == 4096  # 22 n**2 bytes within a tenth of free memory
    assert checks.square_size(0) == 256

"""The load's checking code on numpy: the same code cupy runs on a GPU, at small sizes."""

import numpy as np
import pytest

from gpusoak.load import checks


def _nosync():
    return None


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_clean_products_check_out(dtype):
    r = checks.gemm(np, 48, dtype, 0.05, _nosync)
    assert r.reps >= 1 and r.mismatches == 0 and r.exact_mismatches == 0 and r.tflops > 0


@pytest.mark.parametrize("dtype", ["float32", "float16"])
def test_a_wrong_product_is_caught(dtype):
    def tamper(c, rep):
        if rep == 2:
            c[5, 7] += 1000  # one element of the third product is wrong

    r = checks.gemm(np, 48, dtype, 0.2, _nosync, tamper=tamper)
    assert r.reps > 2 and r.mismatches == 1 and r.exact_mismatches == 0


def test_a_wrong_exact_product_is_caught():
    def tamper(c, rep):
        if rep == -1:  # the first exact check (negative rep: the exact product)
            c[0, 0] = c[0, 0] + 1

    assert checks.gemm(np, 32, "float32", 0.01, _nosync, tamper=tamper).exact_mismatches == 1


def test_exact_inputs_are_exact_in_fp16_at_the_largest_k():
    # k = 2048 with entries in {-1, 0, 1}: every partial sum fits fp16's exact integers.
    assert checks.gemm(np, 8, "float16", 0.0, _nosync, exact_k=2048).exact_mismatches == 0


def test_clean_memory_checks_out():
    r = checks.vram(np, 1 << 20, 1 << 18, _nosync)
    assert (r.bytes_total, r.chunks, r.mismatched_words, r.backed_off) == (1 << 20, 4, 0, False)
    assert r.patterns == ["address", "walking_ones", "random"] and r.write_gbps > 0 and r.read_gbps > 0


def test_a_corrupted_word_is_caught_in_every_pattern():
    def corrupt(buf, index):
        if index == 2:
            buf[1234] ^= np.uint32(1 << 17)  # one bit of one word in the third chunk

    r = checks.vram(np, 1 << 20, 1 << 18, _nosync, corrupt=corrupt)
    assert r.mismatched_words == 3  # once per pattern


def test_patterns_are_functions_of_the_global_word_index():
    assert list(checks.expected(np, "address", 4, 8, 1)) == [8, 9, 10, 11]
    w = checks.expected(np, "walking_ones", 40, 0, 1)
    assert list(w[:3]) == [1, 2, 4] and w[31] == 1 << 31 and w[32] == 1
    r = checks.expected(np, "random", 16, 0, 7)
    assert len(set(r.tolist())) == 16 and (r == checks.expected(np, "random", 16, 0, 7)).all()
    assert (r != checks.expected(np, "random", 16, 0, 8)).any()  # the seed matters
    # A chunk checked alone gives the same words as the whole run: no second copy is needed.
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


class _Scarce:
    """numpy, but memory runs out after three chunks."""

    def __init__(self):
        self.allocations = 0

    def __getattr__(self, name):
        return getattr(np, name)

    def empty(self, *args, **kwargs):
        self.allocations += 1
        if self.allocations > 3:
            raise MemoryError("out of memory")
        return np.empty(*args, **kwargs)


def test_out_of_memory_backs_off_and_says_what_it_got():
    r = checks.vram(_Scarce(), 1 << 21, 1 << 18, _nosync)
    assert r.backed_off and r.chunks == 3 and r.bytes_total == 3 << 18 and r.bytes_requested == 1 << 21
    assert r.mismatched_words == 0

"""The parser takes untrusted input: it never raises, and its cost grows linearly with the input."""

import io
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpusoak.host.klog import KINDS, TRIGGERS, parse_lines, scan

# Fragments of real lines, so the fuzzer reaches the parsing code behind the triggers.
FRAGMENTS = [t.decode() if isinstance(t, bytes) else t.pattern.decode() for t in TRIGGERS] + [
    "NVRM: ", "AER: ", "fallen off the bus", "RmInitAdapter failed", "Failed to enable MSI-X", "error",
    "[ 12.5] ", "NVRM: Xid (PCI:0000:65:00): ", "79, ", "pid=1, name=x, ", "0000:65:00.0", ": ", "\n", " ",
    "Nov 21 21:52:59 h kernel: ", "4,1,2,-;", " DEVICE=+pci:", "severity=", "Uncorrectable (Fatal)",
    "received from ", "; giving up", "after FLR", "[Sat Nov 21 21:52:59 2026] ", "\\x0a", "GPU-I:01 ", ")",
]

text_lines = st.lists(st.one_of(st.text(max_size=80), st.lists(st.sampled_from(FRAGMENTS), max_size=12).map("".join)),
                      max_size=40)


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(text_lines)
def test_never_raises_on_text(lines):
    physical = "\n".join(lines).count("\n") + 1
    for e in parse_lines(lines):
        assert e.kind in KINDS and 1 <= e.line <= physical


@settings(max_examples=300)
@given(st.binary(max_size=2000), st.integers(min_value=1, max_value=300))
def test_never_raises_on_bytes_at_any_block_size(data, block):
    assert [e.line for e in scan(io.BytesIO(data), block_size=block)] == \
        [e.line for e in scan(io.BytesIO(data))]


def _cost(line: str, copies: int) -> float:
    data = ((line + "\n") * copies).encode()
    start = time.process_time()
    for _ in scan(io.BytesIO(data)):
        pass
    return time.process_time() - start


ADVERSARIAL = {
    "wall-clock brackets": lambda k: "[" + "11:11:11 " * k + "Xid (",
    "repeated triggers": lambda k: "AER: Xid (" * k,
    "nested prefixes": lambda k: "Nov 21 11:11:11 h kernel: " * k + "AER: ",
    "long address runs": lambda k: "Xid (PCI:" + "0000:65:00 " * k,
    "giving up wording": lambda k: "not ready 1ms after " + "FLR " * k,
}


def test_cost_is_linear_in_line_length_and_count():
    # Linear growth gives a ratio near 8 for 8x the input; quadratic gives near 64.
    for name, make in ADVERSARIAL.items():
        small, large = make(300), make(2400)
        ratio_len = (_cost(large, 20) + 1e-3) / (_cost(small, 20) + 1e-3)
        ratio_count = (_cost(small, 800) + 1e-3) / (_cost(small, 100) + 1e-3)
        assert ratio_len < 24, f"{name}: 8x longer lines cost {ratio_len:.1f}x"
        assert ratio_count < 24, f"{name}: 8x more lines cost {ratio_count:.1f}x"

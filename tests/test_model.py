import pickle

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpusoak.errors import DeviceGone, GpusoakError, Hung, InvalidAddress
from gpusoak.model import CycleResult, Finding, KernelEvent, PciAddress, normalise_pci, pci_matches


@pytest.mark.parametrize("text, expected", [
    ("0000:65:00.0", "0000:65:00.0"),
    ("0000:9A:00.1", "0000:9a:00.1"),
    ("00000000:65:00.0", "0000:65:00.0"),  # NVML's pciInfo.busId form
    ("10000:01:00.0", "10000:01:00.0"),  # VMD domains print five digits
])
def test_parses_kernel_and_nvml_forms(text, expected):
    assert str(PciAddress.parse(text)) == expected


@pytest.mark.parametrize("bad", [
    "", " ", "../../x", "0000:65:00.0/../..", "0000:65:00.0 ", " 0000:65:00.0", "0000:65:00.0\n",
    "0000:65:00", "65:00.0", "0000:65:00.8", "0000:65:20.0", "0000:6g:00.0", "0000:65:00.0;rm",
    "000:65:00.0", "000000000:65:00.0", "0000/65/00.0",
])
def test_rejects_everything_else(bad):
    with pytest.raises(InvalidAddress):
        PciAddress.parse(bad)


def test_rejects_non_text():
    with pytest.raises(InvalidAddress):
        PciAddress.parse(None)  # type: ignore[arg-type]


def test_address_forms():
    a = PciAddress.parse("0000:65:00.0")
    assert a.slot == "0000:65:00"
    assert a.nvml_bus_id == "00000000:65:00.0"
    assert PciAddress.parse(a.nvml_bus_id) == a


@given(st.text(max_size=40))
def test_parse_is_total_and_path_safe(text):
    try:
        a = PciAddress.parse(text)
    except InvalidAddress:
        return
    s = str(a)
    assert "/" not in s and ".." not in s and s.strip() == s
    assert PciAddress.parse(s) == a


def test_log_addresses_normalise_and_match():
    assert normalise_pci("0000:9A:00") == "0000:9a:00"
    assert normalise_pci("nonsense") is None
    gpu = PciAddress.parse("0000:9a:00.0")
    assert pci_matches("0000:9a:00", gpu) and pci_matches("0000:9a:00.0", gpu)
    assert not pci_matches("0000:9a:00.1", gpu) and not pci_matches(None, gpu)


def test_cycle_result_round_trips_through_its_one_serialisation():
    r = CycleResult(run_id="r", bdf="0000:65:00.0", uuid="GPU-1", action="flr", cycle=3, outcome="failed",
                    started_at="2026-01-01T00:00:00Z", duration_s=65.6,
                    findings=(Finding("flr_not_ready", "x"),),
                    events=(KernelEvent("flr_not_ready", "pci 0000:65:00.0: not ready", pci="0000:65:00.0"),))
    assert CycleResult.from_dict(r.to_dict()) == r
    assert r.reason == "flr_not_ready" and r.attempted


def test_unknown_outcome_is_rejected():
    d = CycleResult(run_id="r", bdf="0000:65:00.0", uuid=None, action="flr", cycle=1, outcome="recovered",
                    started_at="", duration_s=0.0).to_dict()
    d["outcome"] = "fine"
    with pytest.raises(ValueError):
        CycleResult.from_dict(d)


@pytest.mark.parametrize("err", [
    DeviceGone("function vanished", bdf="0000:65:00.0"),
    Hung("write did not return", path="/sys/bus/pci/devices/0000:65:00.0/reset"),
])
def test_errors_carry_fields_and_pickle(err):
    back = pickle.loads(pickle.dumps(err))
    assert type(back) is type(err) and str(back) == str(err)
    assert back.fields == err.fields
    assert isinstance(back, GpusoakError)
    assert (back.bdf or back.path) in str(back)

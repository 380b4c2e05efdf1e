"""remove_rescan and the vfio cycle on a real node's terms: a rescan that reaches only the port's
own bus, and a detach that puts back the driver and driver_override it found."""

from gpusoak.actions import ACTIONS, Context
from gpusoak.model import PciAddress
from gpusoak.sim import open_sim_node
from tests.conftest import record

GPU = PciAddress.parse("0000:18:00.0")
AUDIO = PciAddress.parse("0000:18:00.1")
OTHER = PciAddress.parse("0000:2a:00.0")
CTX = Context()
TWO = ('[services]\nnvidia-persistenced = "inactive"\n[[gpu]]\nbdf = "0000:18:00.0"\nfunctions = ["audio"]\n'
       '[[gpu]]\nbdf = "0000:2a:00.0"\n')


def _node(tmp_path, text=TWO):
    path = tmp_path / "s.toml"
    path.write_text(text)
    return open_sim_node(str(path))


def test_remove_rescan_rescans_only_the_ports_bus_and_leaves_an_operator_removed_gpu_out(tmp_path):
    s = _node(tmp_path)
    try:
        fn = s.node.sysfs.function
        s.kernel.write(fn(OTHER).path / "remove", "1")  # an operator took this GPU out on purpose
        seen = record(s)
        ACTIONS["remove_rescan"].perform(s.node, GPU, CTX)
        assert fn(GPU).present and fn(GPU).driver == "nvidia" and fn(AUDIO).driver == "snd_hda_intel"
        assert not fn(OTHER).present, "the rescan re-added a device the operator had removed"
        assert seen[-1] == ("bus/pci/devices/0000:17:01.0/pci_bus/0000:18/rescan", "1")
    finally:
        s.node.close()


def test_remove_rescan_is_refused_where_no_port_scoped_rescan_exists(tmp_path):
    s = _node(tmp_path, '[services]\nnvidia-persistenced = "inactive"\n[[gpu]]\nbdf = "0000:00:05.0"\n')  # on the root bus, no upstream port
    try:
        (why,) = ACTIONS["remove_rescan"].refusals(s.node, PciAddress.parse("0000:00:05.0"), CTX)
        assert why.reason == "method_unsupported" and "root bus" in why.detail
    finally:
        s.node.close()


def test_vfio_detach_puts_back_a_saved_driver_override_and_binds_the_saved_driver_by_name(tmp_path):
    s = _node(tmp_path)
    try:
        fn = s.node.sysfs.function
        s.kernel.write(fn(AUDIO).path / "driver_override", "snd_hda_intel")  # the operator pinned it
        seen = record(s)
        ACTIONS["vfio_cycle"].perform(s.node, GPU, CTX)
        assert fn(AUDIO).driver_override == "snd_hda_intel" and fn(AUDIO).driver == "snd_hda_intel"
        assert fn(GPU).driver_override is None and fn(GPU).driver == "nvidia"
        detach = seen[[p for p, _ in seen].index("bus/pci/drivers/vfio-pci/unbind"):]
        assert ("bus/pci/drivers/nvidia/bind", str(GPU)) in detach
        assert ("bus/pci/drivers/snd_hda_intel/bind", str(AUDIO)) in detach
        assert not [p for p, _ in detach if p.endswith("drivers_probe")]  # probe may pick another driver
    finally:
        s.node.close()


def test_vfio_detach_leaves_a_function_unbound_that_was_unbound_before(tmp_path):
    s = _node(tmp_path)
    try:
        fn = s.node.sysfs.function
        s.kernel.write(s.node.sysfs.root / "bus/pci/drivers/snd_hda_intel/unbind", str(AUDIO))
        ACTIONS["vfio_cycle"].perform(s.node, GPU, CTX)
        assert fn(GPU).driver == "nvidia" and fn(AUDIO).driver is None and fn(AUDIO).driver_override is None
    finally:
        s.node.close()

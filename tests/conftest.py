import pytest

from gpusoak.sim import open_sim_node


@pytest.fixture
def sim():
    """The default simulated node (8x H100, one flaky under FLR), with nvidia-persistenced stopped as
    a destructive run stops it: running, it holds every GPU's device file, and an unbind or remove
    then waits for it (nv_pci_remove), as on a real node. ``sim_services`` keeps it running."""
    s = open_sim_node()
    assert s.node.runner.run(["systemctl", "stop", "nvidia-persistenced"], timeout_s=5).ok
    yield s
    s.node.close()


@pytest.fixture
def sim_services():
    """The default simulated node as it boots: nvidia-persistenced active, holding every GPU."""
    s = open_sim_node()
    yield s
    s.node.close()


def record(simnode):
    """Record every sysfs write of the production code, in order; the simulated kernel still applies it."""
    seen = []

    def writer(path, data):
        seen.append((str(path.relative_to(simnode.node.sysfs.root)), data))
        simnode.kernel.write(path, data)

    simnode.node.sysfs._writer = writer
    return seen


def after_reset(simnode, then, bdf=None):
    """Run ``then()`` right after each write to a ``reset`` file (of ``bdf``, if given): a fault that
    strikes during the reset, as the kernel or driver would report it."""
    inner = simnode.node.sysfs._writer

    def writer(path, data):
        inner(path, data)
        if path.name == "reset" and (bdf is None or path.parent.name == str(bdf)):
            then()

    simnode.node.sysfs._writer = writer


@pytest.fixture
def record_writes(sim):
    """Every sysfs write of the production code, in order, still applied by the simulated kernel."""
    return record(sim)

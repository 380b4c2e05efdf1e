import pytest

from gpusoak.sim import open_sim_node


@pytest.fixture
def sim():
    """The default simulated node (8x H100, one flaky under FLR)."""
    s = open_sim_node()
    yield s
    s.node.close()


@pytest.fixture
def record_writes(sim):
    """Every sysfs write of the production code, in order, still applied by the simulated kernel."""
    seen = []

    def writer(path, data):
        seen.append((str(path.relative_to(sim.node.sysfs.root)), data))
        sim.kernel.write(path, data)

    sim.node.sysfs._writer = writer
    return seen

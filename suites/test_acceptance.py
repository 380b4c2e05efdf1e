"""Acceptance: before a node takes work, every GPU must come back from every reset, every time.

For each action (default: FLR), each cycle and each GPU: reset it, then wait for it to be present,
in D0, bound to its driver, with its link as before, seen by NVML under the same UUID, and with no
fatal kernel event since the cycle began. Any cycle that does not recover fails here with its reason
(and the recovery ladder's attempts to bring the GPU back). Node-wide actions (module reload) run
after the per-GPU ones, all GPUs at once.

With a profile (acceptance, nightly, readmission) the cycles run in the scheduler first, all GPUs
at once, each GPU and action until its sequential test decides; each cycle is then one test here,
and each GPU and action one more test that states the decision.
"""

import pytest

from gpusoak.plugin import expect_all_recovered, expect_recovered, expect_reliable

pytestmark = pytest.mark.destructive


def test_gpu_recovers_from_reset(run_cycle, action, cycle, gpu):
    result = run_cycle(action, gpu, cycle)
    expect_recovered(result)


def test_node_recovers_from_reset(run_node_cycle, node_action, cycle):
    results = run_node_cycle(node_action, cycle)
    expect_all_recovered(results)


def test_gpu_action_is_reliable(sequence):
    """With a profile: the sequential test's decision for one GPU and action (or the fixed loop's)."""
    expect_reliable(sequence)

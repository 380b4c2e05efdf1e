"""The gpusoak command's own behaviour (the run itself is tested end to end in tests/e2e)."""

import os
import signal

import pytest

from gpusoak import cli


def test_sigterm_stops_a_run_the_way_ctrl_c_does_so_the_node_is_put_back():
    # A pod deletion or a cancelled job sends SIGTERM; Python's default would end the process at
    # once. As KeyboardInterrupt, pytest ends the session and the plugin restores the node.
    before = signal.getsignal(signal.SIGTERM)
    try:
        cli._stop_on_sigterm()
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGTERM)  # the handler runs before the next statement
            pytest.fail("SIGTERM did not stop the run")
    finally:
        signal.signal(signal.SIGTERM, before)

"""Replays a journal as pytest tests, so pytest-html builds report.html from it (`gpusoak report`).

Each recorded cycle becomes a test with the outcome it had; the summary, junit.xml and result.json
come from the same journal through the same code as in a live run.
"""

from gpusoak.plugin import expect_recovered, record


def test_recorded_cycle(replayed_cycle, request):
    record(request.node, replayed_cycle)
    expect_recovered(replayed_cycle)

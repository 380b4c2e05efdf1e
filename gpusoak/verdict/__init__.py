"""The verdict's rules as pure functions of what a run recorded: nothing here reads the node or
writes a file, and nothing here imports the engine (soak, schedule, actions, the host's readers).

- ``events``: which kernel events fail a cycle (the one list);
- ``refusals``: what each refusal reason means (not applicable, or retest);
- ``score``: statistics (Wilson bounds), the GPU classes and node decision of a fixed run, the
  reliability classes as an ordered rule table, and the decision they lead to;
- ``sprt``: the sequential test;
- ``inventory``: what was not tested cannot admit.

Still outside (issue 14 notes): the per-action ``Sequence`` (gpusoak/schedule.py) and the trends
(gpusoak/trends.py, which also reads the history folder).
"""

"""The verdict's rules as pure functions of what a run recorded: nothing here reads the node or
writes a file, and nothing here imports the engine (soak, schedule, actions, the host's readers).

- ``events``: which kernel events fail a cycle (the one list);
- ``refusals``: what each refusal reason means (not applicable, or retest);
- ``score``: statistics (Wilson bounds), the GPU classes and node decision of a fixed run, the
  reliability classes as an ordered rule table, and the decision they lead to;
- ``sprt``: the sequential test;
- ``sequences``: one GPU and action's cycles and its test's state (the scheduler goes on or stops
  by it; the report replays it from the journal);
- ``inventory``: what was not tested cannot admit.

Reports and the fleet import these, never the engine (a test holds both). Still outside: the
trends and the carry-over (gpusoak/trends.py, gpusoak/carry.py), which also read the history
folder, and the health gates' limits (gpusoak/gates.py, which reads their TOML file).
"""

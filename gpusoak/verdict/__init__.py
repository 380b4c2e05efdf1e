"""The verdict's rules as pure functions of what a run recorded: nothing here reads the node or
writes a file, and nothing here imports the engine (soak, schedule, actions, the host's readers).

- ``events``: which kernel events fail a cycle (the one list);
- ``refusals``: what each refusal reason means (not applicable, or retest);
- ``score``: statistics (Wilson bounds), the GPU classes and node decision of a fixed run, the
  reliability classes as an ordered rule table, and the decision they lead to;
- ``sprt``: the sequential test;
- ``sequences``: one GPU and action's cycles and its test's state (the scheduler goes on or stops
  by it; the report replays it from the journal);
- ``inventory``: what was not tested cannot admit;
- ``gates``: the health gates on NVML and AER readings;
- ``trends``: this run against earlier ones.

Reports and the fleet import these, never the engine (a test holds both). The files they need are
read outside: the history folder (gpusoak/history.py, and gpusoak/carry.py, which picks the
evidence to carry over from it) and the gates' limits file (gpusoak/gates.py).
"""

"""The verdict's rules as pure functions of what a run recorded: nothing here reads the node or
writes a file. Reports and the fleet import these; the engine (soak, schedule) records facts and
never decides. Moving the rest of ``gpusoak/score.py`` here is in progress (issue 14): what is here
so far is the refusal table (``refusals``) and the inventory rules (``inventory``)."""

"""What each option of a run may be, and why: one table, checked before anything touches the node.

`gpusoak run` checks its options here before it starts pytest, and the plugin checks the same
table for `pytest suites --gpusoak-...` before it opens the node, so both entry points refuse
the same values with the same words. A refusal is a usage error (exit 2) that names the option
and the reason for its limits. Unchecked, a nonsense value became a verdict about the hardware:
a recovery deadline of -1 s read as "reboot required", a write timeout of 0 as "quarantine".

An option is named here without its prefix: ``--NAME`` for `gpusoak run`, ``--gpusoak-NAME`` for
pytest. A value of None is an option not given: its default is always good.
"""

from __future__ import annotations

import json
import math
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpusoak import journal
from gpusoak.errors import UsageError
from gpusoak.load.protocol import MAX_FRACTION
from gpusoak.profile import parse_duration

# Every cycle of a fixed-count run is a pytest test, made before the first one runs (about 2.5 KB
# each, measured at collection: 80000 tests, 200 MB): the limit bounds that memory, to about 1.4 GB
# for 10000 cycles of the seven per-GPU actions on eight GPUs. It is also 20 times the 1-in-2000 failure rate the profiles
# accept as reliable (p0 = 0.0005, gpusoak/profiles/), more than any verdict needs, and a day of
# one GPU's time at the default 10 s settle window alone. 1e11 cycles ran a node out of memory
# before its first cycle.
MAX_CYCLES = 10_000
# Any wait longer than a day is a typo, or a hung GPU by any operator's measure; and every wait
# must stay below what a thread may wait for (threading.TIMEOUT_MAX, about 292 years on Linux).
MAX_WAIT_S = 86_400.0
# Late driver events land within minutes of a reset (the GSP RPC timeout behind Xid 119 is logged
# only after its timeout): an hour of settling is already far more than they need.
MAX_SETTLE_S = 3_600.0
MAX_BUDGET_S = 30 * 86_400.0  # a month: longer is a typo (30000m for 30m), not a soak plan
JOURNAL = "journal.jsonl"
STATE = "state.json"


@dataclass(frozen=True)
class Given:
    """The options of one run as one entry point has them: their values, and how it spells them."""

    values: Mapping[str, Any]  # option name (as in RULES) -> value, None when not given
    prefix: str = "--"  # "--" for `gpusoak run`, "--gpusoak-" for pytest

    def get(self, name: str) -> Any:
        return self.values.get(name)

    def flag(self, name: str) -> str:
        return f"{self.prefix}{name}"


@dataclass(frozen=True)
class Rule:
    name: str  # the option without its prefix
    check: Callable[[Any, Given], str | None]  # its value and the other options' -> what is wrong, or None
    why: str  # what the option is and why its limits are what they are, said with every refusal


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None  # nan and inf parse as floats


def seconds(*, zero: bool, most: float) -> Callable[[Any, Given], str | None]:
    """A finite number of seconds, above 0 (or 0 too, where 0 means "none"), at most ``most``."""
    def check(value: Any, given: Given) -> str | None:
        number = _number(value)
        if number is None:
            return "not a finite number of seconds"
        if number < 0 or (number == 0 and not zero):
            return "must be 0 or more seconds" if zero else "must be more than 0 seconds"
        if number > most:
            return f"must be at most {most:g} seconds"
        return None
    return check


def _cycles(value: Any, given: Given) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return "not a whole number"
    if not 1 <= value <= MAX_CYCLES:
        return f"must be between 1 and {MAX_CYCLES}"
    return None


def _fraction(value: Any, given: Given) -> str | None:
    number = _number(value)
    if number is None or not 0.0 < number <= MAX_FRACTION:
        return f"must be a number above 0 and at most {MAX_FRACTION} (the load child's limit)"
    return None


def _budget(value: Any, given: Given) -> str | None:
    try:
        budget_s = parse_duration(value)
    except UsageError as err:
        return err.detail
    if budget_s > MAX_BUDGET_S:
        return f"must be at most {MAX_BUDGET_S / 86_400:g} days"
    if not given.get("profile"):
        return f"needs {given.flag('profile')}"
    return None


def _seed(value: Any, given: Given) -> str | None:
    if (given.get("backend") or "sim") == "real":
        return "a real node has no simulator to seed"
    return None


def writable_folder(folder: Path) -> str | None:
    """Why gpusoak could not write files in ``folder`` (created if it is missing), or None. Tried
    for real, with a file that leaves no name behind: the mode bits do not stop root, and a
    read-only mount or a path under a regular file stops everyone."""
    if folder.exists() and not folder.is_dir():
        return f"{folder} is not a folder"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        return f"cannot write in {folder}: {err.strerror or err}"
    return None


def _report_dir(value: Any, given: Given) -> str | None:
    folder = Path(value)
    resume = given.get("resume")
    held, state = folder / JOURNAL, folder / STATE
    if folder.exists() and not folder.is_dir():
        return "is a file: give a folder"
    if held.is_file() and held.stat().st_size > 0:  # an empty journal is one whose run wrote nothing
        run_id = (journal.header_of(held) or {}).get("run_id", "?")
        if resume is None:
            return (f"{folder} already holds run {run_id} ({held}), and a new run would be merged into "
                    f"it: give a new folder, or {given.flag('resume')} {run_id} to continue that run")
        if run_id != resume:
            return f"{folder} holds run {run_id}, not {resume}: {given.flag('resume')} continues a run in its own folder"
        if state.exists() and journal.last_record_type(held) != "restore":
            return (f"run {run_id} did not put the node back (its journal ends without a restore record): "
                    f"continued now, it would save the node as that run left it as the state to put back; "
                    f"run `gpusoak restore {state}`, then start a new run in a new folder")
    elif resume is not None:
        return f"{folder} holds no run to continue ({held} is missing)"
    elif state.exists():
        return (f"{folder} holds the saved node state of an earlier run ({state}), which a new run would "
                f"overwrite: `gpusoak restore` it if that run did not finish, and give a new folder")
    return writable_folder(folder)


def _resume(value: Any, given: Given) -> str | None:
    if given.get("profile"):
        return (f"only a run of fixed cycles can be continued, not a profile's (its sequential test, budget "
                f"and schedule): start a new run without {given.flag('resume')}")
    return None  # the folder's journal is checked with the report dir, the node with check_resume


def _metrics(value: Any, given: Given) -> str | None:
    path = Path(value)
    if path.is_dir():
        return "is a folder: give the file to write"
    return writable_folder(path.parent)


def _inventory(value: Any, given: Given) -> str | None:
    path = Path(value)
    if path.is_dir():
        return "is a folder: give the file to keep"
    return writable_folder(path.parent)  # rewritten right after the run starts, before its first cycle


def _history(value: Any, given: Given) -> str | None:
    path = Path(value)
    if path.exists() and not path.is_dir():
        return "is a file: give a folder"
    return writable_folder(path)


RULES: tuple[Rule, ...] = (
    Rule("cycles", _cycles, f"Cycles per GPU and action: {MAX_CYCLES} are already a day of one GPU's time and "
         "more than any verdict needs, and each is a test held in memory before the first runs"),
    Rule("recovery-deadline", seconds(zero=False, most=MAX_WAIT_S),
         "How long a GPU has to recover after each action: none at all would fail every cycle"),
    Rule("settle", seconds(zero=True, most=MAX_SETTLE_S),
         "How long every check must stay good after they first pass, 0 for not at all: late driver "
         "events land within minutes"),
    Rule("write-timeout", seconds(zero=False, most=MAX_WAIT_S),
         "How long a sysfs write may block before it counts as hung: none at all would call every write hung"),
    Rule("load-seconds", seconds(zero=True, most=MAX_WAIT_S), "The load before each cycle, 0 for none"),
    Rule("post-check-seconds", seconds(zero=True, most=MAX_WAIT_S), "The load after each recovery, 0 for none"),
    Rule("load-fraction", _fraction, "The share of the GPU's free memory the load fills"),
    Rule("budget", _budget, "A profile's time budget, e.g. 30m or 2h"),
    Rule("seed", _seed, "The simulator's seed"),
    Rule("resume", _resume, "It continues a run that stopped, in that run's report folder"),
    Rule("metrics", _metrics, "The Prometheus textfile written at the end of the run"),
    Rule("history", _history, "The folder this run's result.json joins at the end"),
    Rule("inventory", _inventory, "The node's GPU inventory, rewritten when the run starts"),
    # Last: its check creates the folder, which a refusal of any other option should not leave behind.
    Rule("report-dir", _report_dir, "One run's folder: its journal, saved node state and reports"),
)
NAMES = tuple(r.name for r in RULES)


def validate(given: Given) -> None:
    """Raise UsageError for the first option in RULES whose value is wrong."""
    for rule in RULES:
        value = given.get(rule.name)
        if value is None:
            continue
        problem = rule.check(value, given)
        if problem is not None:
            raise UsageError(f"{given.flag(rule.name)} {value}: {problem}. {rule.why}")


# The options that SoakOptions holds, by its field names: a run built in code (gpusoak plan, the
# tests, a profile's load seconds) is held to the same table.
SOAK_FIELDS = {"cycles": "cycles", "recovery_deadline_s": "recovery-deadline", "settle_s": "settle",
               "write_timeout_s": "write-timeout",
               "load_seconds": "load-seconds", "post_check_seconds": "post-check-seconds",
               "load_fraction": "load-fraction"}


def validate_fields(fields: Mapping[str, Any]) -> None:
    """The same rules over SoakOptions' fields."""
    rules = {r.name: r for r in RULES}
    for field, name in SOAK_FIELDS.items():
        if field in fields and fields[field] is not None:
            problem = rules[name].check(fields[field], Given({}))
            if problem is not None:
                raise UsageError(f"--{name} {fields[field]}: {problem}. {rules[name].why}")


def check_resume(header: dict[str, Any], backend: str, hostname: str, options: dict[str, Any],
                 gpus: list[str]) -> None:
    """A continued run is the same run: the same node, GPUs and options as its journal's header
    records, so that every cycle in the journal means what the header says. ``options`` is the
    SoakOptions of the new session as a dict (dataclasses.asdict)."""
    differ = []
    if header.get("backend") != backend:
        differ.append(f"backend {header.get('backend')} in the journal, {backend} now")
    if header.get("hostname") != hostname:
        differ.append(f"host {header.get('hostname')} in the journal, {hostname} now")
    recorded = [g.get("bdf") for g in header.get("gpus") or []]
    if recorded != gpus:
        differ.append(f"GPUs {','.join(map(str, recorded))} in the journal, {','.join(gpus)} now")
    now = json.loads(json.dumps(options))  # tuples as lists, as the header holds them
    before = header.get("options") or {}
    differ += [f"{k} {before.get(k)!r} in the journal, {now.get(k)!r} now"
               for k in sorted(set(before) | set(now)) if before.get(k) != now.get(k)]
    if differ:
        raise UsageError(f"run {header.get('run_id')} cannot be continued: a continued run must be the same "
                         "run, and " + "; ".join(differ))

"""Soak profiles: acceptance, nightly, readmission (gpusoak/profiles/*.toml), or a file of your own.

A profile says which actions run, how many cycles (a fixed number or a sequential test with a cap),
whether GPUs run in parallel, whether actions rotate, the time budget, and how the node's decision
is made. Command-line options override single settings.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Any

import tomllib

from gpusoak.errors import UsageError
from gpusoak.verdict.sprt import SprtParams

BUILT_IN = ("acceptance", "nightly", "readmission")
SUPPORTED = "supported"
DECISIONS = ("standard", "readmission")
_KEYS = {"description", "actions", "cycles", "parallel", "rotate", "budget", "trends", "history", "decision",
         "load_seconds", "post_check_seconds", "sequential"}


@dataclass(frozen=True)
class Profile:
    name: str
    description: str = ""
    actions: tuple[str, ...] | str = SUPPORTED  # a list, or "supported"
    sequential: SprtParams | None = None
    cycles: int = 20  # without a sequential test
    parallel: bool = True
    rotate: bool = False
    budget_s: float | None = None
    trends: bool = False
    history: str | None = None
    decision: str = "standard"
    load_seconds: float | None = None  # None: the node's default
    post_check_seconds: float | None = None
    source: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "description": self.description,
                "actions": list(self.actions) if isinstance(self.actions, tuple) else self.actions,
                "sequential": self.sequential.to_dict() if self.sequential else None, "cycles": self.cycles,
                "parallel": self.parallel, "rotate": self.rotate, "budget_s": self.budget_s, "trends": self.trends,
                "history": self.history, "decision": self.decision, "source": self.source}

    def override(self, **changes: Any) -> Profile:
        return replace(self, **{k: v for k, v in changes.items() if v is not None})


def parse_duration(text: str) -> float:
    """``90s``, ``30m``, ``1h``, ``2h30m``, or plain seconds; a positive number of seconds."""
    text = str(text).strip().lower()
    if re.fullmatch(r"\d+(\.\d+)?", text):
        seconds = float(text)
    else:
        parts = re.fullmatch(r"(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?", text)
        if not text or parts is None or not any(parts.groups()):
            raise UsageError(f"not a duration: {text!r} (want e.g. 90s, 30m, 1h, 2h30m)")
        h, m, s = (float(x) if x else 0.0 for x in parts.groups())
        seconds = h * 3600 + m * 60 + s
    if seconds <= 0:
        raise UsageError(f"a duration must be positive: {text!r}")
    return seconds


def load(name_or_path: str) -> Profile:
    """A built-in profile by name, or a profile file."""
    if name_or_path in BUILT_IN:
        text = (resources.files("gpusoak.profiles") / f"{name_or_path}.toml").read_text()
        source, name = f"gpusoak/profiles/{name_or_path}.toml", name_or_path
    else:
        path = Path(name_or_path)
        try:
            text = path.read_text()
        except OSError as err:
            raise UsageError(f"cannot read profile {name_or_path!r}: {err.strerror} "
                             f"(built-in profiles: {', '.join(BUILT_IN)})") from err
        source, name = str(path), path.stem
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise UsageError(f"profile {source}: {err}") from err
    return from_dict(name, data, source)


def from_dict(name: str, data: dict[str, Any], source: str = "") -> Profile:
    unknown = sorted(set(data) - _KEYS)
    if unknown:
        raise UsageError(f"profile {source or name}: unknown setting(s) {', '.join(unknown)}")
    actions = data.get("actions", SUPPORTED)
    if isinstance(actions, list):
        actions = tuple(str(a) for a in actions)
    elif actions != SUPPORTED:
        raise UsageError(f"profile {source or name}: actions must be a list or \"supported\"")
    sequential = None
    if "sequential" in data:
        seq = data["sequential"]
        try:
            sequential = SprtParams(**{k: seq[k] for k in ("p0", "p1", "alpha", "beta", "cap") if k in seq})
        except (TypeError, ValueError) as err:
            raise UsageError(f"profile {source or name}: sequential: {err}") from err
    decision = data.get("decision", "standard")
    if decision not in DECISIONS:
        raise UsageError(f"profile {source or name}: decision must be one of {', '.join(DECISIONS)}")
    cycles = int(data.get("cycles", 20))
    if cycles < 1:
        raise UsageError(f"profile {source or name}: cycles must be at least 1")
    return Profile(
        name=name, description=str(data.get("description", "")), actions=actions, sequential=sequential,
        cycles=cycles, parallel=bool(data.get("parallel", True)), rotate=bool(data.get("rotate", False)),
        budget_s=parse_duration(data["budget"]) if "budget" in data else None,
        trends=bool(data.get("trends", False)), history=data.get("history"), decision=decision,
        load_seconds=data.get("load_seconds"), post_check_seconds=data.get("post_check_seconds"), source=source)

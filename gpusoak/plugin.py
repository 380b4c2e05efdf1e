"""The pytest plugin: options, and one stateful ``SoakRun`` kept in ``config.stash``.

Hooks here only parse options and hand work to library objects. The plugin is inert until a suite
(``suites/conftest.py``) or ``gpusoak report`` enables it, so it costs nothing in other test runs.
Options are checked against gpusoak/options.py before the node is opened: a bad one is a usage
error (pytest exit 4). A node with no GPU to test ends the session with status 13 (NO_GPU_STATUS,
which `gpusoak run` turns into its exit 3); pytest's own statuses are 0 to 5.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import sys
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import pytest

from gpusoak import carry as carry_mod
from gpusoak import gates as gates_file
from gpusoak import history as history_file
from gpusoak import inventory as inventory_file
from gpusoak import journal as journal_mod
from gpusoak import options as options_mod
from gpusoak import profile as profile_mod
from gpusoak.actions import ACTION_SEMANTICS, ACTIONS, GPU_ACTIONS, NODE_ACTIONS, default_actions
from gpusoak.errors import GpusoakError, NoGpu, UsageError
from gpusoak.files import write_atomically
from gpusoak.host.node import Node, open_real_node
from gpusoak.lock import DEFAULT_LOCK, NodeLock
from gpusoak.model import (
    FAILED,
    HUNG,
    RECOVERED,
    REFUSED,
    SKIPPED,
    CycleResult,
    PciAddress,
    parse_addresses,
)
from gpusoak.profile import SUPPORTED
from gpusoak.report import build as report_build
from gpusoak.report import html as report_html
from gpusoak.schedule import Plan, Scheduler, supported_actions
from gpusoak.soak import Soak, SoakOptions, new_run_id
from gpusoak.verdict import trends

SOAK_RUN = pytest.StashKey["SoakRun"]()
NO_GPU_STATUS = 13  # the session's exit status when the node has no GPU to test (not one of pytest's)


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("gpusoak", "gpusoak reset-reliability soak")
    g.addoption("--gpusoak-backend", default="sim",
                help="sim, sim:SCENARIO (name or .toml path), or real (this node). Default: sim")
    g.addoption("--gpusoak-cycles", type=int, default=None,
                help="cycles per GPU and action (default 20; with a sequential profile: its cap)")
    g.addoption("--gpusoak-actions", default=None, help=f"comma-separated actions ({', '.join(ACTIONS)}); "
                "node-scope ones run after the per-GPU ones (default flr, or the profile's)")
    g.addoption("--gpusoak-profile", default=None, metavar="NAME|TOML",
                help="acceptance, nightly, readmission, or a profile file: sequential stopping, parallel GPUs, "
                "a budget, trends (gpusoak/profiles/)")
    g.addoption("--gpusoak-budget", default=None, help="time budget of a profile's run, e.g. 30m, 1h (node time)")
    g.addoption("--gpusoak-serial", action="store_true", default=False,
                help="with a profile: one GPU after another instead of all at once")
    g.addoption("--gpusoak-baseline", default=None, metavar="RESULT_JSON",
                help="compare with this earlier result.json (trends)")
    g.addoption("--gpusoak-node-name", default=None,
                help="this node's name in the scheduler (default: $SLURMD_NODENAME, $NODE_NAME, or the host name)")
    g.addoption("--gpusoak-metrics", default=None, metavar="PROM",
                help="also write a Prometheus textfile (node_exporter's textfile collector) here")
    g.addoption("--gpusoak-history", default=None, metavar="DIR",
                help="folder of earlier result.json files to compare with; this run's is added (trends)")
    g.addoption("--gpusoak-stop-services", action="store_true", default=False,
                help="deprecated, now the default: a destructive run stops the GPU services (persistenced, "
                "DCGM, NVSM, vGPU manager) before its first cycle and starts them again at the end")
    g.addoption("--gpusoak-keep-services", action="store_true", default=False,
                help="keep the GPU services running: every action they would block is refused (service_active), "
                "naming them. nvidia-fabricmanager and nvidia-imex are never stopped")
    g.addoption("--gpusoak-allow-mig", action="store_true", default=False,
                help="soak GPUs with MIG enabled (else refused, mig_enabled): their GPU and compute instances, which a reset destroys, are recreated after each cycle and checked (mig_layout), and the load runs on their first MIG device")
    g.addoption("--gpusoak-no-ladder", action="store_true", default=False,
                help="do not climb the recovery ladder after a failed cycle")
    g.addoption("--gpusoak-identity-strict", action="store_true", default=False,
                help="a /dev/nvidiaN minor or NVML index that changed after a cycle fails it (the scheduler's "
                "configuration names GPUs so: gres.conf File=/dev/nvidiaN, jobs by index); default: a finding")
    g.addoption("--gpusoak-lock-file", default=None,
                help=f"lock file that keeps one destructive run per node (default {DEFAULT_LOCK} on a real node)")
    g.addoption("--gpusoak-inventory", default=None, metavar="JSON",
                help="the node's GPU inventory across reboots: a GPU in it that is not on the bus fails the node "
                "(gpu_missing); rewritten with what was found when none is missing (default "
                "/var/lib/gpusoak/inventory.json for a destructive run on a real node)")
    g.addoption("--gpusoak-load-seconds", type=float, default=None,
                help="compute + VRAM load before each cycle, in a child process (0: none; default 20 on a "
                "real node, the scenario's on the simulator)")
    g.addoption("--gpusoak-load-fraction", type=float, default=0.9, help="share of free GPU memory to fill")
    g.addoption("--gpusoak-post-check-seconds", type=float, default=None,
                help="short load after recovery that proves the GPU computes correctly (0: none)")
    g.addoption("--gpusoak-write-timeout", type=float, default=90.0,
                help="seconds a sysfs write may block before it counts as hung (default 90)")
    g.addoption("--gpusoak-gpus", default="", help="comma-separated PCI addresses (default: every NVIDIA GPU)")
    g.addoption("--gpusoak-devices", default="",
                help="comma-separated PCI functions of any vendor to soak instead of the NVIDIA GPUs "
                "(NVML checks are skipped for non-NVIDIA functions, with that reason)")
    g.addoption("--gpusoak-seed", type=int, default=None, help="simulator seed (default: the scenario's)")
    g.addoption("--gpusoak-sim-load", choices=("auto", "child", "in-process"), default="auto",
                help="simulator only: run each load as the real child process (child), or its code in gpusoak's "
                "process (in-process: fast, for profiles and benchmarks). Default auto: in-process for a "
                "profile's run, the child otherwise")
    g.addoption("--gpusoak-run-id", default=None, help="run identifier (default: UTC time and a random suffix)")
    g.addoption("--gpusoak-report-dir", default=None,
                help="report folder (default reports/<run-id>); one that holds an earlier run is refused")
    g.addoption("--gpusoak-resume", default=None, metavar="RUN_ID",
                help="continue the run RUN_ID in its report folder: its cycles not yet in the journal run, "
                "on the same node with the same options; a run that did not put the node back, or a "
                "profile's run, cannot be continued")
    g.addoption("--gpusoak-destructive", action="store_true", default=False,
                help="allow resets on a real node (also GPUSOAK_DESTRUCTIVE=1)")
    g.addoption("--gpusoak-recovery-deadline", type=float, default=60.0,
                help="seconds a GPU has to recover after each action (default 60)")
    g.addoption("--gpusoak-settle", type=float, default=10.0,
                help="seconds every check must stay good after they first pass (default 10)")
    g.addoption("--gpusoak-gates", default=None, metavar="TOML",
                help="health-gate limits (defaults from DCGM; see gpusoak/verdict/gates.py)")
    g.addoption("--gpusoak-replay", default=None, metavar="JOURNAL",
                help="rebuild the reports of a finished or killed run from its journal")


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config: pytest.Config) -> None:
    if config.getoption("gpusoak_replay", None):
        enable(config)


def enable(config: pytest.Config) -> None:
    """Turn the plugin on for this session: called by suites/conftest.py and by the replay suite."""
    if SOAK_RUN in config.stash or hasattr(config, "workerinput"):
        return
    try:
        run = SoakRun(config)
    except NoGpu as err:
        pytest.exit(f"gpusoak: {err}", returncode=NO_GPU_STATUS)
    except GpusoakError as err:
        raise pytest.UsageError(f"gpusoak: {err}") from err
    config.stash[SOAK_RUN] = run
    config.pluginmanager.register(run, "gpusoak-run")
    # pytest-html reads these in its own pytest_configure, which runs after this one.
    if not config.getoption("htmlpath", None):
        config.option.htmlpath = str(run.report_dir / "report.html")
    config.option.self_contained_html = True


def soak_run(config: pytest.Config) -> SoakRun:
    try:
        return config.stash[SOAK_RUN]
    except KeyError:
        raise pytest.UsageError("gpusoak is not enabled in this session: run the suites "
                                "(`gpusoak run` or `pytest suites`)") from None


class SoakRun:
    """One session's soak (live) or replay: the journal, and the reports at the end."""

    def __init__(self, config: pytest.Config) -> None:
        opt = config.getoption
        self.config = config
        self.replay_path = opt("gpusoak_replay")
        self.node: Node | None = None
        self.soak: Soak | None = None
        self.lock: NodeLock | None = None
        self.replayed: list[CycleResult] = []
        self.built: report_build.Built | None = None
        self.profile = None
        self.plan: Plan | None = None
        self.scheduler: Scheduler | None = None
        self.scheduled: dict[tuple[str, str, int], CycleResult] | None = None
        self.scheduled_node: dict[tuple[str, int], list[CycleResult]] = {}
        self.carried: dict[tuple[str, str], carry_mod.Carried] = {}
        if self.replay_path:
            content = journal_mod.read(Path(self.replay_path))
            self.replayed = content.results
            self.run_id = content.header.get("run_id") or "replay"
            self.report_dir = Path(opt("gpusoak_report_dir") or Path(self.replay_path).parent)
            self.journal_path = Path(self.replay_path)
            return
        resume = opt("gpusoak_resume")
        if resume and opt("gpusoak_run_id") not in (None, resume):
            raise UsageError(f"--gpusoak-run-id {opt('gpusoak_run_id')} and --gpusoak-resume {resume} name two runs")
        self.run_id = resume or opt("gpusoak_run_id") or new_run_id()
        self.report_dir = Path(opt("gpusoak_report_dir") or config.rootpath / "reports" / self.run_id)
        self.journal_path = self.report_dir / "journal.jsonl"
        destructive = opt("gpusoak_destructive") or os.environ.get("GPUSOAK_DESTRUCTIVE") == "1"
        inventory = opt("gpusoak_inventory")
        self.inventory_warning: str | None = None
        if inventory is None and opt("gpusoak_backend") == "real" and destructive:
            # The default place: kept where it can be (a read-only root, an immutable OS cannot),
            # and said so where it cannot; a path the user gave must be writable (the option check).
            why = options_mod.writable_folder(inventory_file.DEFAULT_INVENTORY.parent)
            if why is None:
                inventory = inventory_file.DEFAULT_INVENTORY
            else:
                self.inventory_warning = (f"the node's GPU inventory is not kept ({why}): pass --inventory FILE on a "
                                          "disk that outlives a reboot, so that a GPU lost in one fails the next run")
                # Straight to the process's stderr: pytest captures output while it configures.
                print(f"gpusoak: warning: {self.inventory_warning}", file=sys.__stderr__, flush=True)
        options_mod.validate(options_mod.Given(
            {**{name: opt("gpusoak_" + name.replace("-", "_")) for name in options_mod.NAMES},
             "report-dir": self.report_dir, "inventory": opt("gpusoak_inventory"), "profile": opt("gpusoak_profile"),
             "backend": opt("gpusoak_backend")}, prefix="--gpusoak-"))
        self.done: set[tuple[str, int, str]] = set()  # (action, cycle, bdf) in the journal of a continued run
        self.inventory_path = Path(inventory) if inventory is not None else None
        self.profile = _profile(config)
        given = opt("gpusoak_actions")
        actions = tuple(a.strip() for a in (given or "").split(",") if a.strip())
        if self.profile is not None and not given:
            actions = self.profile.actions if isinstance(self.profile.actions, tuple) else tuple(ACTIONS)
        unknown = [a for a in actions if a not in ACTIONS]
        if unknown:
            raise GpusoakError(f"unknown action(s) {', '.join(unknown)}: use {', '.join(ACTIONS)}")
        self.node = open_node(opt("gpusoak_backend"), opt("gpusoak_seed"))
        try:
            self._start(config, actions, given, destructive, resume)
        except BaseException:
            self.node.close()  # the session never starts: nothing else would close it
            raise

    def _start(self, config: pytest.Config, actions: tuple[str, ...], given: str | None, destructive: bool,
               resume: str | None) -> None:
        opt = config.getoption
        if self.node.simulated:
            mode = opt("gpusoak_sim_load")
            self.node.runner.load_in_process = mode == "in-process" or (mode == "auto" and self.profile is not None)
        actions = actions or default_actions(self.node)  # flr, or gpu_reset + module_reload on an NVSwitch node
        load_s = opt("gpusoak_load_seconds")
        post_s = opt("gpusoak_post_check_seconds")
        if self.profile is not None:
            load_s = self.profile.load_seconds if load_s is None else load_s
            post_s = self.profile.post_check_seconds if post_s is None else post_s
        options = SoakOptions(cycles=opt("gpusoak_cycles") or 20, actions=actions,
                              recovery_deadline_s=opt("gpusoak_recovery_deadline"), settle_s=opt("gpusoak_settle"),
                              write_timeout_s=opt("gpusoak_write_timeout"),
                              destructive=destructive, keep_services=opt("gpusoak_keep_services"),
                              allow_mig=opt("gpusoak_allow_mig"),
                              ladder=not opt("gpusoak_no_ladder"), gates=gates_file.load(opt("gpusoak_gates")),
                              identity_strict=opt("gpusoak_identity_strict"),
                              load_seconds=self.node.load_seconds_default if load_s is None else load_s,
                              load_fraction=opt("gpusoak_load_fraction"),
                              post_check_seconds=self.node.post_check_seconds_default if post_s is None else post_s)
        inventory_path = self.inventory_path
        previous = inventory_file.read(inventory_path) if inventory_path is not None else None
        gpus = select_gpus(self.node, parse_addresses(opt("gpusoak_devices")), parse_addresses(opt("gpusoak_gpus")),
                           expected=previous["gpus"] if previous else [])
        if self.profile is not None and self.profile.actions == SUPPORTED and not given:
            supported = supported_actions(self.node, gpus, options.context_for(gpus), actions)
            options = replace(options, actions=supported or default_actions(self.node))
        self.soak = Soak(self.node, self.run_id, options, gpus)
        self.soak.node_name = (opt("gpusoak_node_name") or os.environ.get("SLURMD_NODENAME")
                               or os.environ.get("NODE_NAME") or self.node.hostname)
        if self.profile is not None:
            self.plan = _plan(self.profile, options.actions, opt("gpusoak_cycles"))
            self.soak.profile = {**self.profile.to_dict(), "plan": {
                "actions": list(self.plan.actions), "cycles": self.plan.max_cycles(),
                "budget_s": self.plan.budget_s, "rotate": self.plan.rotate, "parallel": self.plan.parallel,
                "sequential": self.plan.sequential.to_dict() if self.plan.sequential else None},
                "baseline": opt("gpusoak_baseline"), "history": opt("gpusoak_history") or self.profile.history}
            self._carry(opt("gpusoak_history"))
        if resume:
            self.done = self._resumable(options, gpus)
        lock_path = opt("gpusoak_lock_file") or (DEFAULT_LOCK if self.node.backend == "real" and destructive else None)
        self.lock = NodeLock(Path(lock_path), self.run_id) if lock_path else None
        if self.lock is not None:
            self.lock.acquire()
        if inventory_path is not None:
            self.soak.previous_inventory = previous
        self.soak.start(self.journal_path, self.report_dir / "state.json")
        if inventory_path is not None:
            self._keep_inventory(inventory_path)
        elif self.inventory_warning and self.soak.journal is not None:
            self.soak.journal.note({"type": "inventory_warning", "warning": self.inventory_warning})
        if resume:
            started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds")
            self.soak.journal.note({"type": "resume", "started_at": started, "cycles_before": len(self.done)})

    def _resumable(self, options: SoakOptions, gpus: list[PciAddress]) -> set[tuple[str, int, str]]:
        """The cycles a continued run finds in its journal, after checking it is the same run."""
        content = journal_mod.read(self.journal_path)
        options_mod.check_resume(content.header, self.node.backend, self.node.hostname, asdict(options),
                                 [str(g) for g in gpus])
        done = {(r.action, r.cycle, r.bdf) for r in content.results}
        left = [1 for a in options.actions for c in range(1, options.cycles + 1) for g in gpus
                if (a, c, str(g)) not in done]
        if not left:
            raise UsageError(f"every cycle of run {self.run_id} is in {self.journal_path}: nothing to continue "
                             f"(`gpusoak report {self.journal_path}` rebuilds its reports)")
        return done

    def _carry(self, given_history: str | None) -> None:
        """A profile that keeps a history (nightly) goes on from the evidence of the earlier runs
        there (gpusoak/carry.py), recorded in the journal header so that a rebuilt report starts
        where this run did. A profile without one (acceptance, readmission) starts afresh, also
        when --history names a folder to compare with."""
        assert self.soak is not None and self.node is not None and self.plan is not None
        if self.profile is None or self.profile.history is None or self.plan.sequential is None:
            return
        folder = Path(given_history or self.profile.history)
        history = history_file.load([folder]) if folder.is_dir() else trends.History()  # none yet: the first night
        found = carry_mod.carry(history, folder, self.soak.node_name or self.node.hostname,
                                self.node.driver_version(), self.node.kernel, dict(ACTION_SEMANTICS),
                                [(str(b), self.soak.baselines[b].uuid) for b in self.soak.gpus],
                                self.plan.actions, self.plan.sequential)
        self.carried = found.sequences
        self.soak.carried = found.to_dict()

    def _keep_inventory(self, path: Path) -> None:
        """Rewrite the node's inventory with what this run found, unless a GPU of it is missing:
        that one must keep failing the node's runs until someone removes it on purpose."""
        assert self.soak is not None and self.node is not None
        previous = self.soak.previous_inventory
        found = [str(b) for b in self.soak.found]
        if previous is not None and any(b not in found for b in previous["gpus"]):
            return
        entries = [{"bdf": b, "device": f"0x{d:04x}" if (d := self.node.sysfs.function(g).device_id) else None}
                   for b, g in zip(found, self.soak.found, strict=True)]
        inventory_file.write(path, self.run_id, self.soak.node_name or self.node.hostname, entries)

    # -- collection --------------------------------------------------------------------------
    def pytest_generate_tests(self, metafunc: pytest.Metafunc) -> None:
        names = metafunc.fixturenames
        if "replayed_cycle" in names:
            metafunc.parametrize("replayed_cycle", self.replayed,
                                 ids=[f"{r.action}-c{r.cycle:03d}-{r.bdf}" for r in self.replayed])
        elif {"action", "gpu", "cycle"} <= set(names) and self.soak is not None:
            soak = self.soak
            if self.plan is not None:  # a profile's run: its cycles already ran, in the scheduler
                scheduled = self.run_schedule()
                order = {a: i for i, a in enumerate(soak.options.actions)}
                cases = sorted({(a, c, PciAddress.parse(g)) for g, a, c in scheduled if a in GPU_ACTIONS},
                               key=lambda t: (order.get(t[0], 99), t[1], t[2]))
            else:  # a continued run leaves out the cycles already in its journal
                cases = [(a, c, g) for a in soak.options.actions if a in GPU_ACTIONS
                         for c in range(1, soak.options.cycles + 1) for g in soak.gpus
                         if (a, c, str(g)) not in self.done]
            metafunc.parametrize(("action", "cycle", "gpu"), cases,
                                 ids=[f"{a}-c{c:03d}-{g}" for a, c, g in cases])
        elif {"node_action", "cycle"} <= set(names) and self.soak is not None:
            soak = self.soak
            if self.plan is not None:
                self.run_schedule()
                cases = sorted(self.scheduled_node)
            else:
                cases = [(a, c) for a in soak.options.actions if a in NODE_ACTIONS
                         for c in range(1, soak.options.cycles + 1)
                         if not any((a, c, str(g)) in self.done for g in soak.gpus)]
            metafunc.parametrize(("node_action", "cycle"), cases, ids=[f"{a}-c{c:03d}" for a, c in cases])
        elif "sequence" in names and self.soak is not None:
            seqs = list(self.run_schedule_sequences()) if self.plan is not None else []
            metafunc.parametrize("sequence", seqs, ids=[f"{s.action}-{s.bdf}" for s in seqs])

    def pytest_collection_modifyitems(self, config: pytest.Config, items: list[pytest.Item]) -> None:
        # Without a profile there are no sequences to judge: leave those tests out, not skipped.
        if self.plan is None:
            kept = [i for i in items if "sequence" not in getattr(i, "fixturenames", ())]
            if len(kept) != len(items):
                config.hook.pytest_deselected(items=[i for i in items if i not in kept])
                items[:] = kept

    # -- a profile's run ---------------------------------------------------------------------
    def run_schedule(self) -> dict[tuple[str, str, int], CycleResult]:
        """Run the profile's schedule once (at collection: the cycles it runs decide which tests exist)."""
        if self.scheduled is not None:
            return self.scheduled
        self.scheduled = {}
        if self.config.option.collectonly:
            return self.scheduled
        assert self.soak is not None and self.plan is not None
        self.scheduler = Scheduler(self.soak, self.plan, on_progress=self._progress,
                                   progress_every_s=1.0 if self.node and self.node.simulated else 5.0,
                                   carried=self.carried)
        try:
            self.scheduler.run()
        finally:
            for r in self.scheduler.results:
                if r.action in NODE_ACTIONS:
                    self.scheduled_node.setdefault((r.action, r.cycle), []).append(r)
                else:
                    self.scheduled[(r.bdf, r.action, r.cycle)] = r
        return self.scheduled

    def run_schedule_sequences(self) -> list:
        self.run_schedule()
        if self.scheduler is None:
            return []
        return [s for s in self.scheduler.sequences.values() if s.cycles]

    def _progress(self, progress) -> None:
        self.report_dir.mkdir(parents=True, exist_ok=True)
        doc = {"node_s": progress.node_s, "gpus": [vars(g) for g in progress.gpus.values()]}
        write_atomically(self.report_dir / "progress.json", json.dumps(doc, indent=1))
        tr = self.config.pluginmanager.get_plugin("terminalreporter")
        if tr is not None and not (self.node and self.node.simulated and progress.gpus and
                                   not all(g.done for g in progress.gpus.values())):
            for line in progress.lines():
                tr.write_line(f"gpusoak progress: {line}")

    # -- the end -----------------------------------------------------------------------------
    @pytest.hookimpl(tryfirst=True)
    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        if self.soak is not None and self.soak.journal is not None:
            try:
                self.soak.finish()  # put the node back as it was found, also after failures
            finally:
                self.soak.journal.close()
                if self.lock is not None:
                    self.lock.release()
        if not self.journal_path.exists():
            return
        self.built = report_build.rebuild(self.journal_path, self.report_dir)
        self._add_to_history()
        metrics_path = self.config.getoption("gpusoak_metrics")
        if metrics_path:
            from gpusoak import metrics

            metrics.write(Path(metrics_path), self.built.document)

    def _add_to_history(self) -> None:
        """A nightly run's result.json joins its history folder, for the nights after it."""
        prof = (self.built.content.header.get("profile") if self.built else None) or {}
        if not (prof.get("trends") and prof.get("history")) or self.replay_path:
            return
        folder = Path(prof["history"])
        try:
            write_atomically(folder / f"{self.run_id}.json", self.built.result_json.read_bytes())
        except (OSError, GpusoakError) as err:  # the run's own reports are written; say so, lose nothing
            tr = self.config.pluginmanager.get_plugin("terminalreporter")
            if tr is not None:
                tr.write_line(f"gpusoak: could not add the result to the history {folder}: {err}")

    @pytest.hookimpl(optionalhook=True)
    def pytest_html_results_summary(self, prefix: list, summary: list, postfix: list, session: Any) -> None:
        if self.built is None:
            return
        h = self.built.content.header
        prefix.append(report_html.summary(self.built.verdict, run_id=h.get("run_id"), backend=h.get("backend"),
                                          kernel=h.get("kernel"), driver=h.get("driver"),
                                          results=self.built.content.results, document=self.built.document,
                                          settle_s=(h.get("options") or {}).get("settle_s"),
                                          notes=self.built.content.notes))

    @pytest.hookimpl(optionalhook=True)
    def pytest_html_report_title(self, report: Any) -> None:
        report.title = f"gpusoak {self.run_id}"

    def pytest_terminal_summary(self, terminalreporter: Any) -> None:
        if self.built is None:
            return
        v = self.built.verdict
        tr = terminalreporter
        tr.write_sep("=", f"gpusoak: node {v.hostname}: {v.decision}")
        for g in v.gpus:
            tr.write_line(f"  {g.bdf}  {g.gpu_class:<13} {'; '.join(g.evidence)}")
        for problem in self.built.content.problems:
            tr.write_line(f"  journal: {problem}")
        tr.write_line(f"  reports: {self.report_dir}")

    def pytest_unconfigure(self, config: pytest.Config) -> None:
        html = config.getoption("htmlpath", None)
        if html and Path(html).exists():
            report_html.make_offline(Path(html))
        if self.node is not None:
            self.node.close()


def select_gpus(node: Node, devices: list[PciAddress], wanted: list[PciAddress],
                expected: list[str] = ()) -> list[PciAddress]:
    """The functions to soak: the named PCI functions (--devices), else the named NVIDIA GPUs
    (--gpus), else every NVIDIA GPU of the node. None at all is NoGpu, unless the node's inventory
    (``expected``) lists GPUs: then they are missing, which the verdict fails the node for
    (gpu_missing), never "nothing to test"."""
    if devices:
        present = set(node.sysfs.pci_devices())
        missing = [str(b) for b in devices if b not in present]
        if missing:
            raise GpusoakError(f"no PCI function at {', '.join(missing)} on this node")
        return devices
    found = node.gpus()
    missing = [str(b) for b in wanted if b not in found]
    if missing:
        raise GpusoakError(f"no NVIDIA GPU at {', '.join(missing)} on this node")
    if not found and not expected:  # a node without GPUs has nothing to judge: no verdict, not even retest
        raise NoGpu(f"no NVIDIA GPU on {node.hostname} ({node.backend}): no PCI function under "
                    f"{node.sysfs.root / 'bus' / 'pci' / 'devices'} has NVIDIA's vendor id and a display class, "
                    "so there is nothing to test (to soak other PCI functions, name them with --devices)")
    return wanted or found


def open_node(backend: str, seed: int | None) -> Node:
    if backend == "real":
        return open_real_node()
    if backend == "sim" or backend.startswith("sim:"):
        from gpusoak.sim import open_sim_node

        return open_sim_node(backend[4:] or None, seed=seed).node
    raise GpusoakError(f"unknown backend {backend!r}: use sim, sim:SCENARIO or real")


def expect_recovered(result: CycleResult) -> None:
    """The assertion every suite makes about one cycle, in pytest's terms."""
    if result.outcome == RECOVERED:
        return
    if result.outcome in (FAILED, HUNG):
        pytest.fail(result.explain(), pytrace=False)
    why = "; ".join(f"{f.reason}: {f.detail}" for f in result.findings) or result.outcome
    pytest.skip(f"{result.outcome}: {why}")


def expect_all_recovered(results: list[CycleResult]) -> None:
    """A node-wide cycle passes only if every GPU came back."""
    bad = [r for r in results if r.outcome in (FAILED, HUNG)]
    if bad:
        pytest.fail("\n".join(r.explain() for r in bad), pytrace=False)
    if all(r.outcome in (REFUSED, SKIPPED) for r in results):
        expect_recovered(results[0])


def expect_reliable(sequence) -> None:
    """A GPU and action passes when its sequential test says reliable (or, with fixed cycles, when
    every cycle recovered); unreliable fails; undecided or not applicable is a skip with why."""
    outcome = sequence.outcome
    what = f"{sequence.action} on {sequence.bdf}: {sequence.failures} of {sequence.attempts} attempts failed"
    if outcome in ("reliable", "passed"):
        return
    if outcome in ("unreliable", "failed"):
        test = f" ({sequence.test.params.describe()})" if sequence.test is not None else ""
        pytest.fail(f"{what}: {outcome}{test}", pytrace=False)
    why = sequence.refusal or sequence.stopped or "running"
    pytest.skip(f"{outcome}: {what}; stopped: {why}")


def record(item: pytest.Item, result: CycleResult) -> None:
    """Facts of one cycle on the test item (pytest-html rows, xunit properties)."""
    item.user_properties.extend([("bdf", result.bdf), ("action", result.action), ("cycle", result.cycle),
                                 ("outcome", result.outcome), ("recovery_s", result.recovery_s)])


def _profile(config: pytest.Config):
    name = config.getoption("gpusoak_profile")
    if not name:
        for flag in ("gpusoak_budget", "gpusoak_serial"):
            if config.getoption(flag):
                raise GpusoakError(f"--{flag.replace('_', '-')} needs a profile (--gpusoak-profile)")
        return None
    prof = profile_mod.load(name)
    budget = config.getoption("gpusoak_budget")
    return prof.override(budget_s=profile_mod.parse_duration(budget) if budget else None,
                         parallel=False if config.getoption("gpusoak_serial") else None)


def _plan(prof, actions: tuple[str, ...], cycles: int | None) -> Plan:
    sequential = prof.sequential
    if sequential is not None and cycles:
        sequential = replace(sequential, cap=cycles)
    return Plan(actions=actions, sequential=sequential, cycles=cycles or prof.cycles, budget_s=prof.budget_s,
                rotate=prof.rotate, parallel=prof.parallel)

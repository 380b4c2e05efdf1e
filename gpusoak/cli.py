"""The `gpusoak` command.

    gpusoak run     soak the node (the simulated one by default) and write the reports
    gpusoak report  rebuild the reports of a run from its journal (also of a killed run)
    gpusoak events  the GPU and PCI events in a kernel log, in any of the formats seen in the field
    gpusoak inspect what this node's GPUs are, how they sit, and which resets could run (read-only)
    gpusoak plan    exactly what a run would do: actions, order, sysfs writes, commands, services;
                    with --profile, the node time it takes on a real node
    gpusoak restore put a node back as a run's saved state says (after a crash)
    gpusoak fleet   many nodes' results in one view; decisions as Slurm/Kubernetes actions
    gpusoak metrics a result.json as a Prometheus textfile

Exit status of `run`: 0 the run completed and its reports are written (with --strict: and the
node's decision is admit); 1 with --strict, the decision is not admit; 2 a bad option (checked
before the first cycle: gpusoak/options.py), a report folder that holds an earlier run, or an
output path that cannot be written; 3 no GPU to test: the node shows no NVIDIA GPU, no
--devices were named and its inventory lists none (no verdict at all, not even retest); 4 the run could not complete (see the
message; every finished cycle is in the journal).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from gpusoak import __version__, model
from gpusoak.errors import GpusoakError

EXIT_OK, EXIT_DECISION, EXIT_USAGE, EXIT_NO_GPU, EXIT_INCOMPLETE = 0, 1, 2, 3, 4


def suites_dir() -> Path:
    """The suites of this checkout, or the copy inside an installed wheel."""
    here = Path(__file__).resolve().parent
    for candidate in (here.parent / "suites", here / "_project" / "suites"):
        if (candidate / "conftest.py").is_file():
            return candidate
    raise GpusoakError("cannot find the gpusoak suites; pass --suites DIR")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gpusoak", description=__doc__.split("\n\n")[0])
    p.add_argument("--version", action="version", version=f"gpusoak {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="soak the node and write reports")
    run.add_argument("--backend", default="sim", help="sim, sim:SCENARIO (name or .toml) or real (default sim)")
    run.add_argument("--cycles", type=int, default=None,
                     help="cycles per GPU and action (default 20; with a sequential profile: its cap)")
    run.add_argument("--actions", default=None, help="comma-separated actions (default flr, on an NVSwitch node gpu_reset,module_reload; "
                     "or the profile's)")
    run.add_argument("--profile", default=None, metavar="NAME|TOML",
                     help="acceptance, nightly, readmission, or a profile file (gpusoak/profiles/*.toml)")
    run.add_argument("--budget", default=None, help="a profile's time budget, e.g. 30m, 1h")
    run.add_argument("--serial", action="store_true", help="with a profile: one GPU after another")
    run.add_argument("--baseline", type=Path, default=None, help="an earlier result.json to compare with")
    run.add_argument("--node-name", default=None,
                     help="this node's name in Slurm/Kubernetes (default $SLURMD_NODENAME, $NODE_NAME, host name)")
    run.add_argument("--metrics", type=Path, default=None,
                     help="also write a Prometheus textfile here (for node_exporter's textfile collector)")
    run.add_argument("--history", type=Path, default=None,
                     help="a folder of earlier result.json files to compare with; this run's is added")
    run.add_argument("--gpus", default="", help="comma-separated PCI addresses (default: all NVIDIA GPUs)")
    run.add_argument("--devices", default="",
                     help="PCI functions of any vendor to soak instead of the NVIDIA GPUs (e.g. 0000:03:00.0)")
    run.add_argument("--seed", type=int, default=None, help="simulator seed (default: the scenario's)")
    run.add_argument("--sim-load", choices=("auto", "child", "in-process"), default="auto",
                     help="simulator only: each load as the real child process, or its code in gpusoak's process "
                     "(fast); default auto: in-process for a profile, the child otherwise")
    run.add_argument("--report-dir", type=Path, default=None,
                     help="default: reports/<run-id>; a folder that holds an earlier run is refused (see --resume)")
    run.add_argument("--resume", default=None, metavar="RUN_ID",
                     help="continue the run RUN_ID in its report folder (default reports/RUN_ID): the cycles not "
                     "yet in its journal run, on the same node with the same options; not a profile's run, nor "
                     "one that did not put the node back")
    run.add_argument("--destructive", action="store_true",
                     help="allow resets on a real node (also GPUSOAK_DESTRUCTIVE=1)")
    run.add_argument("--recovery-deadline", type=float, default=60.0, help="seconds to recover (default 60)")
    run.add_argument("--settle", type=float, default=10.0, metavar="SECONDS",
                     help="recovery holds only if every check stays good this long after they first pass; "
                     "late driver events land in it (default 10)")
    run.add_argument("--gates", type=Path, default=None, help="TOML file of health-gate limits")
    run.add_argument("--stop-services", action="store_true",
                     help="deprecated, now the default: a destructive run stops the GPU services (persistenced, "
                     "DCGM, NVSM, vGPU manager) before its first cycle and starts them again at the end")
    run.add_argument("--keep-services", action="store_true",
                     help="keep the GPU services running: every action they would block is refused "
                     "(service_active), naming them. nvidia-fabricmanager and nvidia-imex are never stopped")
    run.add_argument("--allow-mig", action="store_true",
                     help="soak GPUs with MIG enabled (else refused, mig_enabled): their GPU and compute instances, which a reset destroys, are recreated after each cycle and checked (mig_layout), and the load and post-check run on their first MIG device only")
    run.add_argument("--no-ladder", action="store_true", help="no recovery ladder after a failed cycle")
    run.add_argument("--identity-strict", action="store_true",
                     help="the scheduler names GPUs by /dev/nvidiaN or index (gres.conf File=, jobs by index): "
                     "a minor or NVML index that changed after a cycle fails it (default: a finding); never in a "
                     "parallel run, nor where another GPU left the driver and moved the indices")
    run.add_argument("--inventory", type=Path, default=None, metavar="JSON",
                     help="the node's GPU inventory across reboots: a GPU in it not on the bus fails the node (gpu_missing) "
                     "(default /var/lib/gpusoak/inventory.json for a destructive run on a real node)")
    run.add_argument("--lock-file", type=Path, default=None, help="default /run/gpusoak.lock on a real node")
    run.add_argument("--load-seconds", type=float, default=None,
                     help="load before each cycle (0: none; default 20 on a real node, the scenario's on sim)")
    run.add_argument("--load-fraction", type=float, default=0.9, help="share of free GPU memory to fill")
    run.add_argument("--post-check-seconds", type=float, default=None, help="load after recovery (0: none; default: the node's, 5 s on a real node); the link speed is "
                     "judged under this load only, so 0 leaves it unjudged")
    run.add_argument("--write-timeout", type=float, default=90.0, help="seconds before a blocked write is hung")
    run.add_argument("--strict", action="store_true", help="exit 1 unless the node's decision is admit")
    run.add_argument("--suites", type=Path, default=None, help="suites folder (default: gpusoak's own)")
    run.add_argument("-q", "--quiet", action="store_true", help="less pytest output")
    run.add_argument("pytest_args", nargs="*", help="extra pytest arguments, after --")

    rep = sub.add_parser("report", help="rebuild report.html, junit.xml and result.json from a journal")
    rep.add_argument("journal", type=Path, help="journal.jsonl of a run")
    rep.add_argument("--out", type=Path, default=None, help="output folder (default: the journal's)")
    ev = sub.add_parser("events", help="list the GPU/PCI events in a kernel log (file or - for stdin)")
    ev.add_argument("source", help="a log file (dmesg, journalctl, syslog, /dev/kmsg dump...) or - for stdin")
    ev.add_argument("--json", action="store_true", help="one JSON object per line")
    ins = sub.add_parser("inspect", help="inventory, topology, health and what could run, per GPU (read-only); "
                                         "exit 3 when the node has no NVIDIA GPU")
    ins.add_argument("--backend", default="real", help="real (this node, default), sim or sim:SCENARIO")
    ins.add_argument("--gpus", default="", help="comma-separated PCI addresses (default: every NVIDIA GPU)")
    ins.add_argument("--json", action="store_true", help="JSON for machines")
    plan = sub.add_parser("plan", help="print exactly what a run would do, and do nothing")
    plan.add_argument("--backend", default="sim", help="sim, sim:SCENARIO or real (default sim)")
    plan.add_argument("--actions", default=None,
                      help="comma-separated actions (default flr, on an NVSwitch node gpu_reset,module_reload)")
    plan.add_argument("--gpus", default="", help="comma-separated PCI addresses (default: all NVIDIA GPUs)")
    plan.add_argument("--cycles", type=int, default=20)
    plan.add_argument("--stop-services", action="store_true", help="deprecated, now the default")
    plan.add_argument("--keep-services", action="store_true", help="plan a run with --keep-services")
    plan.add_argument("--profile", default=None, metavar="NAME|TOML",
                      help="plan a profile's run (acceptance, nightly, readmission, or a file), with an estimate of "
                      "its node time on a real node: cycles, time per cycle, parallel or serial, nights at its budget")
    plan.add_argument("--budget", default=None, help="with --profile: its time budget, e.g. 30m, 1h")
    plan.add_argument("--json", action="store_true")

    fl = sub.add_parser("fleet", help="roll up many nodes' result.json into fleet.html/.csv/.json, and turn "
                        "each node's decision into its scheduler's action (printed; --apply to do it)")
    fl.add_argument("folders", nargs="+", type=Path, help="folders holding result.json files (searched below)")
    fl.add_argument("--out", type=Path, default=Path("."), help="where fleet.html, fleet.csv, fleet.json go (default .)")
    fl.add_argument("--scheduler", choices=("none", "slurm", "k8s"), default="none",
                    help="print (or apply) the scheduler's actions: Slurm drain/resume, Kubernetes label/taint")
    fl.add_argument("--apply", action="store_true", help="run the scheduler commands (scontrol or kubectl)")
    met = sub.add_parser("metrics", help="a result.json as a Prometheus textfile")
    met.add_argument("result", type=Path)
    met.add_argument("--out", type=Path, default=None, help="file to write atomically (default: stdout)")
    res = sub.add_parser("restore", help="re-apply a saved node state (reports/<run-id>/state.json)")
    res.add_argument("state", type=Path)
    res.add_argument("--backend", default="real", help="real (default), sim or sim:SCENARIO")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "run":
            return _run(args)
        if args.command == "events":
            return _events(args)
        if args.command == "fleet":
            return _fleet(args)
        if args.command == "metrics":
            return _metrics(args)
        if args.command == "inspect":
            return _inspect(args)
        if args.command == "plan":
            return _plan(args)
        if args.command == "restore":
            return _restore(args)
        return _report(args)
    except GpusoakError as err:
        print(f"gpusoak: {err}", file=sys.stderr)
        return EXIT_USAGE


def _run(args: argparse.Namespace) -> int:
    if (args.budget or args.serial) and not args.profile:
        print("gpusoak: --budget and --serial need --profile", file=sys.stderr)
        return EXIT_USAGE
    suites = args.suites or suites_dir()
    from gpusoak import options  # here, not at the top: `gpusoak events` starts faster
    from gpusoak.soak import new_run_id

    run_id = args.resume or new_run_id()
    report_dir = (args.report_dir or Path("reports") / run_id).resolve()
    # Checked here, before pytest starts, in this command's own option names; the plugin checks the
    # same table again for `pytest suites` (a GpusoakError from here is exit 2, in main).
    values = {name: getattr(args, name.replace("-", "_")) for name in options.NAMES}
    options.validate(options.Given({**values, "report-dir": report_dir, "profile": args.profile,
                                    "backend": args.backend}))
    argv = [str(suites), "-p", "no:cacheprovider", "--rootdir", str(suites.parent),
            f"--gpusoak-backend={args.backend}", f"--gpusoak-report-dir={report_dir}",
            f"--gpusoak-run-id={run_id}",
            f"--gpusoak-recovery-deadline={args.recovery_deadline}", f"--gpusoak-settle={args.settle}",
            f"--html={report_dir / 'report.html'}", "--self-contained-html"]
    if args.cycles is not None:
        argv.append(f"--gpusoak-cycles={args.cycles}")
    if args.resume:
        argv.append(f"--gpusoak-resume={args.resume}")
    if args.actions is not None:
        argv.append(f"--gpusoak-actions={args.actions}")
    if args.profile:
        profile = args.profile if not Path(args.profile).is_file() else str(Path(args.profile).resolve())
        argv.append(f"--gpusoak-profile={profile}")
    if args.budget:
        argv.append(f"--gpusoak-budget={args.budget}")
    if args.serial:
        argv.append("--gpusoak-serial")
    if args.baseline is not None:
        argv.append(f"--gpusoak-baseline={args.baseline.resolve()}")
    if args.history is not None:
        argv.append(f"--gpusoak-history={args.history.resolve()}")
    if args.node_name:
        argv.append(f"--gpusoak-node-name={args.node_name}")
    if args.metrics is not None:
        argv.append(f"--gpusoak-metrics={args.metrics.resolve()}")
    if args.gpus:
        argv.append(f"--gpusoak-gpus={args.gpus}")
    if args.devices:
        argv.append(f"--gpusoak-devices={args.devices}")
    if args.seed is not None:
        argv.append(f"--gpusoak-seed={args.seed}")
    if args.sim_load != "auto":
        argv.append(f"--gpusoak-sim-load={args.sim_load}")
    if args.gates is not None:
        argv.append(f"--gpusoak-gates={args.gates.resolve()}")
    if args.stop_services and args.keep_services:
        print("gpusoak: --stop-services and --keep-services contradict each other", file=sys.stderr)
        return EXIT_USAGE
    if args.keep_services:
        argv.append("--gpusoak-keep-services")
    if args.allow_mig:
        argv.append("--gpusoak-allow-mig")
    if args.no_ladder:
        argv.append("--gpusoak-no-ladder")
    if args.identity_strict:
        argv.append("--gpusoak-identity-strict")
    if args.lock_file is not None:
        argv.append(f"--gpusoak-lock-file={args.lock_file.resolve()}")
    if args.inventory is not None:
        argv.append(f"--gpusoak-inventory={args.inventory.resolve()}")
    argv.append(f"--gpusoak-write-timeout={args.write_timeout}")
    argv.append(f"--gpusoak-load-fraction={args.load_fraction}")
    if args.load_seconds is not None:
        argv.append(f"--gpusoak-load-seconds={args.load_seconds}")
    if args.post_check_seconds is not None:
        argv.append(f"--gpusoak-post-check-seconds={args.post_check_seconds}")
    if args.destructive or os.environ.get("GPUSOAK_DESTRUCTIVE") == "1":
        argv.append("--gpusoak-destructive")
    argv += ["-q"] if args.quiet else ["-rfE"]
    argv += args.pytest_args
    import pytest  # only the soak and the report need it; `events` starts faster without

    _stop_on_sigterm()
    code = pytest.main(argv)
    return _finish(code, report_dir, args.strict)


def _stop_on_sigterm() -> None:
    """SIGTERM (a pod deleted, a job cancelled, systemctl stop) stops the run the way Ctrl-C does:
    pytest ends the session and the plugin puts the node back within the grace period. Python's
    default for SIGTERM ends the process at once, with the node half-reset; SIGINT cannot be used
    instead, since a shell starts background commands with SIGINT ignored (POSIX, "Asynchronous
    Lists") and Python then installs no handler for it."""
    import signal

    def stop(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, stop)


def _finish(code: int, report_dir: Path, strict: bool) -> int:
    from gpusoak.plugin import NO_GPU_STATUS

    result = report_dir / "result.json"
    if int(code) == NO_GPU_STATUS:  # pytest printed the plugin's message
        return EXIT_NO_GPU
    if int(code) == 4:  # pytest's usage error: its message says which option; no cycle ran
        return EXIT_USAGE
    if int(code) not in (0, 1) or not result.exists():
        print(f"gpusoak: the run did not complete (pytest exit {int(code)}); "
              f"finished cycles are in {report_dir / 'journal.jsonl'}", file=sys.stderr)
        return EXIT_INCOMPLETE
    decision = json.loads(result.read_text())["node"]["decision"]
    print(f"gpusoak: decision {decision}; reports in {report_dir}")
    if strict and decision != "admit":
        return EXIT_DECISION
    return EXIT_OK


def _report(args: argparse.Namespace) -> int:
    journal = args.journal.resolve()
    if not journal.is_file():
        print(f"gpusoak: no journal at {journal}", file=sys.stderr)
        return EXIT_USAGE
    out = (args.out or journal.parent).resolve()
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        print(f"gpusoak: cannot create {out}: {err.strerror}", file=sys.stderr)
        return EXIT_USAGE
    suite = Path(__file__).resolve().parent / "report" / "replay_suite.py"
    argv = [str(suite), "-q", "-p", "no:cacheprovider", "-c", os.devnull, "--rootdir", str(out),
            f"--gpusoak-replay={journal}", f"--gpusoak-report-dir={out}",
            f"--html={out / 'report.html'}", "--self-contained-html"]
    import pytest

    code = pytest.main(argv)
    return _finish(code, out, strict=False)


def _plan(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from gpusoak import estimate, plan
    from gpusoak import profile as profile_mod
    from gpusoak.actions import default_actions
    from gpusoak.host.node import Node
    from gpusoak.plugin import open_node
    from gpusoak.soak import SoakOptions

    if args.budget and not args.profile:
        print("gpusoak: --budget needs --profile", file=sys.stderr)
        return EXIT_USAGE
    prof = profile_mod.load(args.profile) if args.profile else None
    given = tuple(a for a in (args.actions or "").split(",") if a)
    if prof is not None:
        prof = prof.override(budget_s=profile_mod.parse_duration(args.budget) if args.budget else None,
                             actions=given or None)
    node = open_node(args.backend, None)
    try:
        options = SoakOptions(cycles=args.cycles, actions=given or default_actions(node),
                              keep_services=args.keep_services)
        gpus = model.parse_addresses(args.gpus) or node.gpus()
        if prof is None:
            report = plan.make(node, gpus, options)
        else:
            # As on a real node: its load and post-check defaults unless the profile sets them.
            options = replace(
                options, actions=estimate.planned_actions(node, gpus, prof, options) or default_actions(node),
                cycles=prof.sequential.cap if prof.sequential else prof.cycles,
                load_seconds=Node.load_seconds_default if prof.load_seconds is None else prof.load_seconds,
                post_check_seconds=(Node.post_check_seconds_default if prof.post_check_seconds is None
                                    else prof.post_check_seconds))
            report = plan.make(node, gpus, options)
            report["profile"] = prof.to_dict()
            report["estimate"] = estimate.make(node, gpus, prof, options,
                                               carries_over=prof.history is not None and prof.sequential is not None)
    finally:
        node.close()
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(plan.render(report) + (estimate.render(report["estimate"]) if prof is not None else ""), end="")
    return EXIT_OK


def _restore(args: argparse.Namespace) -> int:
    from gpusoak import state
    from gpusoak.actions import Context
    from gpusoak.plugin import open_node

    saved = state.load(args.state)
    node = open_node(args.backend, None)
    try:
        if not node.is_root and not node.simulated:
            print("gpusoak: restore writes sysfs and runs modprobe/systemctl: run it as root", file=sys.stderr)
            return EXIT_USAGE
        # A state file says which node it was saved on: one from the simulator, or from another
        # host, must never drive this node's modprobe, rescans and systemctl.
        if saved.backend.split(":")[0] != node.backend.split(":")[0] or \
                (not node.simulated and saved.hostname != node.hostname):
            print(f"gpusoak: {args.state} was saved on {saved.hostname} ({saved.backend}); this is "
                  f"{node.hostname} ({node.backend}): nothing restored", file=sys.stderr)
            return EXIT_USAGE
        changes = state.restore(node, saved, Context())
    finally:
        node.close()
    for line in changes or ["nothing to change: the node is as saved"]:
        print(line)
    return EXIT_INCOMPLETE if any(c.startswith("FAILED") for c in changes) else EXIT_OK


def _inspect(args: argparse.Namespace) -> int:
    from gpusoak import inspect
    from gpusoak.plugin import open_node

    node = open_node(args.backend, None)
    try:
        wanted = model.parse_addresses(args.gpus)
        report = inspect.inspect_node(node, wanted or None)
    finally:
        node.close()
    print(json.dumps(report, indent=2) if args.json else inspect.render_table(report), end="" if not args.json else "\n")
    return inspect.EXIT_OK if report["gpus"] else inspect.EXIT_NO_GPU


def _fleet(args: argparse.Namespace) -> int:
    from gpusoak import fleet

    missing = [str(f) for f in args.folders if not f.exists()]
    if missing:
        print(f"gpusoak: no such folder: {', '.join(missing)}", file=sys.stderr)
        return EXIT_USAGE
    rollup = fleet.collect(args.folders)
    try:
        paths = fleet.write(rollup, args.out)
    except OSError as err:
        print(f"gpusoak: cannot write the fleet reports in {args.out}: {err.strerror}", file=sys.stderr)
        return EXIT_INCOMPLETE
    classes = ", ".join(f"{c} {n}" for c, n in fleet.by_class(rollup).items()) or "no nodes"
    print(f"gpusoak fleet: {len(rollup.rows)} nodes ({classes}); {rollup.files} files, "
          f"{len(rollup.problems)} skipped; {paths['html']}")
    for problem in rollup.problems[:20]:
        print(f"  skipped: {problem}", file=sys.stderr)
    if args.scheduler == "none":
        if args.apply:
            print("gpusoak: --apply needs --scheduler slurm or k8s", file=sys.stderr)
            return EXIT_USAGE
        return EXIT_OK
    if args.scheduler == "slurm":
        try:
            from gpusoak.host.commands import SubprocessRunner

            reasons = fleet.slurm_reasons(SubprocessRunner())
        except (RuntimeError, ValueError) as err:
            if args.apply:
                print(f"gpusoak: cannot read the nodes' state from Slurm: {err}", file=sys.stderr)
                return EXIT_INCOMPLETE
            reasons = {}  # printing only: assume not drained, and say so
            print("gpusoak: Slurm not reachable; showing changes as if no node were drained", file=sys.stderr)
        changes = fleet.slurm_changes(rollup.rows, reasons)
    else:
        changes = fleet.k8s_changes(rollup.rows)
    for c in changes:
        print(("apply " if args.apply else "would ") + str(c))
        if c.patch is not None:
            print(f"    patch: {json.dumps(c.patch, sort_keys=True)}")
    if not args.apply:
        return EXIT_OK
    failed = [r for r in fleet.apply(changes) if not r.ok]
    for r in failed:
        print(f"gpusoak: {' '.join(r.argv)} failed: {(r.stderr or r.stdout).strip() or r.returncode}", file=sys.stderr)
    return EXIT_INCOMPLETE if failed else EXIT_OK


def _metrics(args: argparse.Namespace) -> int:
    from gpusoak import metrics

    try:
        document = json.loads(args.result.read_text())
    except (OSError, ValueError) as err:
        print(f"gpusoak: cannot read {args.result}: {err}", file=sys.stderr)
        return EXIT_USAGE
    try:
        text = metrics.render(document)
    except (AttributeError, KeyError, TypeError) as err:
        print(f"gpusoak: {args.result} is not a gpusoak result.json ({type(err).__name__}: {err})", file=sys.stderr)
        return EXIT_USAGE
    if args.out is None:
        print(text, end="")
        return EXIT_OK
    metrics.write(args.out, document)
    return EXIT_OK


def _event_json(e) -> str:
    """One event as a JSON object: what ``json.dumps`` of the same dict gives, several times faster
    (the one step per event that is not parsing; tests compare the two)."""
    from json.encoder import encode_basestring_ascii as q

    def s(v: str | None) -> str:
        return "null" if v is None else q(v)

    return (f'{{"line": {e.line}, "kind": {q(e.kind)}, "pci": {s(e.pci)}, '
            f'"xid": {"null" if e.xid is None else e.xid}, "severity": {s(e.severity)}, '
            f'"action": {s(e.action)}, "text": {q(e.text)}, "timestamp": {s(e.stamp)}}}')


def _events(args: argparse.Namespace) -> int:
    """Stream events out as they are found: memory does not grow with the log."""
    from gpusoak.host.klog import scan_path

    source = sys.stdin.fileno() if args.source == "-" else args.source
    out = sys.stdout
    try:
        events = scan_path(source)  # opens the log now: a bad path fails before the header
        if not args.json:
            out.write(f"{'LINE':>8}  {'KIND':<13} {'PCI':<13} {'XID':>4} {'SEVERITY':<9} {'ACTION':<17} TEXT\n")
        for e in events:
            if args.json:
                out.write(_event_json(e) + "\n")
            else:
                text = e.text.replace("\n", " | ")
                out.write(f"{e.line:>8}  {e.kind:<13} {e.pci or '-':<13} {e.xid if e.xid is not None else '-':>4} "
                          f"{e.severity or '-':<9} {e.action or '-':<17} {text}\n")
        out.flush()
    except BrokenPipeError:  # `gpusoak events log | head`
        sys.stderr.close()
        return EXIT_OK
    except OSError as err:
        print(f"gpusoak: cannot read {args.source}: {err.strerror or err}", file=sys.stderr)
        return EXIT_USAGE
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

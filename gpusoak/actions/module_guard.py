"""What module_reload checks before its first rmmod, so that it cannot strand the node.

An rmmod that succeeds followed by a modprobe that fails leaves every tenant of the node without
its driver; a modprobe that loads a newer driver than the one unloaded upgrades the node mid-soak.
So, before anything is unloaded:

- **Dependents come from the kernel**: ``/sys/module/M/holders/`` has one entry per module that uses
  M (kernel/module/sysfs.c add_usage_links), and rmmod refuses M while it has any (kmod
  tools/rmmod.c check_module_inuse). nvidia's holders, transitively, are unloaded first, each after
  its own holders; a holder outside the stack gpusoak reloads (nvidia_vgpu_vfio, nvidia_fs,
  gdrdrv, ...) is a refusal that names it: gpusoak would not know how to put it back.
- **The modules can be loaded back**: ``/lib/modules/<release>`` exists (a container without the
  host's has none), and ``modprobe --show-depends M`` resolves each module to ``insmod FILE``
  lines of files that exist. ``--show-depends`` ignores what is loaded (kmod tools/modprobe.c: -D
  sets ignore_loaded); ``modprobe -n`` does not, so for a loaded module it prints nothing and
  always passes. The path printed comes from the index, unopened (print_action), hence the
  existence check here.
- **The driver on disk is the one loaded**: ``modinfo -k <release> -F version nvidia`` reads the
  file modprobe would load; it must equal ``/sys/module/nvidia/version``.

Every query is read-only and runs through the node's runner; a query that cannot answer refuses
(a check that could not look has not passed).
"""

from __future__ import annotations

from pathlib import Path

from gpusoak.actions.base import CANNOT_RELOAD, DRIVER_MISMATCH, HELD_BY_MODULE, Context
from gpusoak.host.commands import CommandResult
from gpusoak.host.node import Node
from gpusoak.model import Finding

# The NVIDIA modules gpusoak unloads and loads back, in the order that breaks ties (reference 4.3).
RELOADED = ("nvidia_drm", "nvidia_modeset", "nvidia_uvm", "nvidia_peermem", "nvidia")


def holders(node: Node, module: str) -> list[str] | None:
    """The modules that use ``module`` (its holders/ entries); None when they cannot be read."""
    try:
        return sorted(p.name for p in (node.sysfs.root / "module" / module / "holders").iterdir())
    except OSError:
        return None


def nvidia_stack(node: Node) -> tuple[list[str], list[Finding]]:
    """nvidia and every module holding it, transitively, in unload order (each after its holders);
    and why it cannot be unloaded: a holder outside RELOADED, or holders that cannot be read."""
    if not (node.sysfs.root / "module" / "nvidia").is_dir():
        return [], []
    found: dict[str, list[str]] = {}
    why: list[Finding] = []
    todo = ["nvidia"]
    while todo:
        m = todo.pop()
        if m in found:
            continue
        users = holders(node, m)
        if users is None:
            why.append(Finding(CANNOT_RELOAD, f"could not read /sys/module/{m}/holders: which modules use {m} "
                               "is unknown"))
            users = []
        found[m] = users
        for u in users:
            if u not in RELOADED:
                why.append(Finding(HELD_BY_MODULE, f"the {u} module uses {m}; gpusoak reloads only "
                                   f"{', '.join(RELOADED)}: unload {u} first, or leave module_reload out"))
            else:
                todo.append(u)
    return _unload_order(found), why


def _unload_order(found: dict[str, list[str]]) -> list[str]:
    order: list[str] = []
    rank = {m: i for i, m in enumerate(RELOADED)}
    left = set(found)
    while left:
        ready = [m for m in left if all(u in order or u not in found for u in found[m])]
        if not ready:  # the kernel allows no cycle of uses; should one show, keep the usual order
            ready = list(left)
        m = min(ready, key=lambda x: (rank.get(x, len(rank)), x))
        order.append(m)
        left.discard(m)
    return order


def load_back_refusals(node: Node, modules: list[str], ctx: Context) -> list[Finding]:
    """Why the modules, once unloaded, might not come back (or might come back as another driver)."""
    if not modules:
        return []
    release = node.kernel
    base = node.modules_root / "lib" / "modules" / release
    if not base.is_dir():
        return [Finding(CANNOT_RELOAD, f"{base} does not exist here (a container without the host's "
                        f"modules?): modprobe could not load {', '.join(modules)} back after rmmod")]
    out = []
    if "nvidia" in modules:
        out += _driver_version(node, release, ctx)
    for m in modules:
        out += _resolves(node, m, ctx)
    return out


def _kmod_root(node: Node, option: str) -> list[str]:
    # modprobe reads MODPROBE_OPTIONS itself; modinfo does not: name the root to both alike.
    return [] if node.modules_root == Path("/") else [option, str(node.modules_root)]


def _query(node: Node, argv: list[str], ctx: Context) -> tuple[CommandResult, str]:
    r = node.runner.run(argv, timeout_s=ctx.command_timeout_s)
    if r.timed_out:
        return r, f"{' '.join(argv)} did not answer within {ctx.command_timeout_s:g} s"
    lines = (r.stderr or r.stdout).strip().splitlines()
    return r, f"{' '.join(argv)} exited {r.returncode}" + (f": {lines[0]}" if lines else "")


def _driver_version(node: Node, release: str, ctx: Context) -> list[Finding]:
    argv = ["modinfo", *_kmod_root(node, "-b"), "-k", release, "-F", "version", "nvidia"]
    r, said = _query(node, argv, ctx)
    on_disk = r.stdout.strip().splitlines()[0].strip() if r.ok and r.stdout.strip() else None
    loaded = (node.driver_version() or "").strip() or None
    if on_disk is None:
        return [Finding(DRIVER_MISMATCH, f"could not read the version of the nvidia module on disk ({said}): "
                        "a reload might load another driver")]
    if loaded is None:
        return [Finding(DRIVER_MISMATCH, "could not read /sys/module/nvidia/version: the loaded driver cannot "
                        f"be compared with the one on disk ({on_disk})")]
    if on_disk != loaded:
        return [Finding(DRIVER_MISMATCH, f"the nvidia module on disk is {on_disk} but {loaded} is loaded (a driver "
                        "upgraded and not yet loaded): a reload would load the new one mid-soak")]
    return []


def _resolves(node: Node, module: str, ctx: Context) -> list[Finding]:
    argv = ["modprobe", *_kmod_root(node, "-d"), "--show-depends", module]
    r, said = _query(node, argv, ctx)
    if not r.ok:
        return [Finding(CANNOT_RELOAD, f"modprobe could not resolve {module} ({said}): it would not load back")]
    missing, commands, own = [], [], False
    for line in r.stdout.splitlines():
        kind, _, rest = line.strip().partition(" ")
        if kind == "insmod":
            path = rest.split(" ", 1)[0]
            if not Path(path).is_file():
                missing.append(path)
            own = own or _name_of(path) == _canonical(module)
        elif kind == "builtin":
            own = own or _canonical(rest.strip()) == _canonical(module)
        elif kind == "install":
            commands.append(rest.strip())
    if missing:
        return [Finding(CANNOT_RELOAD, f"modprobe would load {module} from files that do not exist: "
                        f"{', '.join(missing)}")]
    if commands:
        return [Finding(CANNOT_RELOAD, f"modprobe would run an install command for {module} ({commands[0]}): "
                        "gpusoak cannot check that it loads the module back")]
    if not own:
        return [Finding(CANNOT_RELOAD, f"{' '.join(argv)} named no file for {module}: it would not load back")]
    return []


def _canonical(name: str) -> str:
    return name.replace("-", "_")  # kmod treats '-' and '_' in module names alike


def _name_of(path: str) -> str:
    name = Path(path).name
    return _canonical(name[:name.index(".ko")] if ".ko" in name else name)

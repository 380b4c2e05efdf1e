"""The simulated node's kernel modules on disk: /lib/modules/<release>, and what kmod reads there.

    <root>/lib/modules/<release>/modules.dep                 depmod's text index
    <root>/lib/modules/<release>/updates/dkms/nvidia.ko.zst   where DKMS installs the NVIDIA modules

A module file here holds only its ``.modinfo`` strings (``key=value``, NUL-separated, as the ELF
section does): what modinfo and a load read. ``modules.dep`` lists each module's dependencies the
way depmod(8) writes it (``path: dep-path ...``, transitive, paths relative to the release folder);
like the real index it is not rewritten when a file is deleted, so a module can be indexed and
still be missing on disk (the case ``modprobe --show-depends`` cannot see, kmod tools/modprobe.c
print_action prints ``kmod_module_get_path`` without opening it).
"""

from __future__ import annotations

from pathlib import Path

from gpusoak.sim.scenario import Scenario

# Which modules a module uses (its symbol dependencies: the kernel links it into each one's
# holders/, kernel/module/sysfs.c add_usage_links). NVIDIA's: reference 4.3. gdrdrv (gdrcopy) and
# nvidia_vgpu_vfio call nvidia's exported symbols (nvidia_p2p_get_pages and the vGPU interface) [I:
# built against nvidia's Module.symvers, so a hard dependency rather than symbol_get].
USES: dict[str, tuple[str, ...]] = {
    "nvidia": (),
    "nvidia_uvm": ("nvidia",),
    "nvidia_modeset": ("nvidia",),
    "nvidia_peermem": ("nvidia",),
    "nvidia_drm": ("nvidia_modeset",),
    "gdrdrv": ("nvidia",),
    "nvidia_vgpu_vfio": ("nvidia",),
}
NVIDIA_STACK = ("nvidia", "nvidia_uvm", "nvidia_modeset", "nvidia_peermem", "nvidia_drm")


def canonical(name: str) -> str:
    """kmod treats '-' and '_' in a module name alike (libkmod's modname_normalize)."""
    return name.replace("-", "_")


def release_dir(root: Path, release: str) -> Path:
    return root / "lib" / "modules" / release


def relpath(module: str) -> str:
    # [U] updates/dkms/ is where DKMS installs modules on Debian/Ubuntu (dkms.conf
    # DEST_MODULE_LOCATION is overridden there); not checked against DKMS's documentation.
    return f"updates/dkms/{module.replace('_', '-')}.ko.zst"


def dependencies(module: str) -> list[str]:
    """A module's dependencies, transitively, in load order (deepest first)."""
    out: list[str] = []

    def visit(m: str) -> None:
        for d in USES.get(m, ()):
            visit(d)
            if d not in out:
                out.append(d)

    visit(module)
    return out


def install(root: Path, scenario: Scenario) -> None:
    """What the driver package put on disk: every module the scenario names, and nvidia's stack,
    at the on-disk driver version (the scenario's ``driver_on_disk``, else its running driver)."""
    if not scenario.lib_modules:
        return  # a container without the host's /lib/modules
    base = release_dir(root, scenario.kernel)
    version = scenario.driver_on_disk or scenario.driver
    names = list(dict.fromkeys([*NVIDIA_STACK, *scenario.modules]))
    dep_lines = []
    for name in names:
        info = {"name": name, "version": version if name in NVIDIA_STACK else "", "license": "Dual MIT/GPL",
                "vermagic": f"{scenario.kernel} SMP preempt mod_unload modversions"}
        path = base / relpath(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        # The .modinfo section holds "key=value" strings, NUL-separated (libkmod/libkmod-elf.c reads
        # the ".modinfo" section as such); a file holding only that section is the simulator's.
        path.write_bytes(b"\0".join(f"{k}={v}".encode() for k, v in info.items() if v) + b"\0")
        # kmod tools/depmod.c output_deps: "path:" then mod_get_all_sorted_dependencies, sorted
        # by the topological dep_sort_idx; that this puts the nearest dependency first is [I].
        deps = [relpath(d) for d in reversed(dependencies(name))]  # depmod: nearest dependency first
        dep_lines.append(f"{relpath(name)}:{''.join(' ' + d for d in deps)}")
    (base / "modules.dep").write_text("\n".join(dep_lines) + "\n")


def index(base: Path) -> dict[str, list[str]] | None:
    """modules.dep as {module: [dependency paths]} keyed by module name; None when the release
    folder has no index (no /lib/modules/<release>: kmod finds no module at all)."""
    try:
        text = (base / "modules.dep").read_text()
    except OSError:
        return None
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        path, sep, deps = line.partition(":")
        if sep:
            out[module_name(path)] = [path, *deps.split()]
    return out


def module_name(path: str) -> str:
    name = Path(path).name
    return canonical(name[:name.index(".ko")] if ".ko" in name else name)


def modinfo(path: Path) -> dict[str, list[str]] | None:
    """A module file's .modinfo strings; None when it cannot be read (missing)."""
    try:
        data = path.read_bytes()
    except OSError:
        return None
    out: dict[str, list[str]] = {}
    for item in data.split(b"\0"):
        key, sep, value = item.decode(errors="replace").partition("=")
        if sep:
            out.setdefault(key, []).append(value)
    return out

#!/usr/bin/env bash
# gpusoak's first look at a machine with NVIDIA GPUs: read-only checks plus one load child.
#
#   bash bench/gpu_smoke.sh [OUT_DIR]        # from the checkout; nothing installed, no network
#
# It never resets, unbinds, reconfigures or changes MIG on anything: it reads nvidia-smi, NVML
# (through gpusoak's own query child), sysfs and the kernel log, and runs one load child on the
# first GPU (cupy where it is installed; the checks run on the device). Each step that could not
# look says why (no nvidia-smi, no PCI sysfs in a sandbox, no /dev/kmsg, no cupy) instead of
# failing, and the script exits 0 unless gpusoak itself cannot be imported. Everything it saw is
# written to OUT_DIR (default $OUT, else /tmp/gpusoak-smoke), one file per step, and summary.txt.
# Under 10 minutes: each step has a deadline, the load window is 10 s.
set -u
cd "$(dirname "$0")/.." || exit 2
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python3}
OUT_DIR=${1:-${OUT:-/tmp/gpusoak-smoke}}
LOAD_SECONDS=${LOAD_SECONDS:-10}
mkdir -p "$OUT_DIR" || exit 2
SUMMARY="$OUT_DIR/summary.txt"
: > "$SUMMARY"

say() { echo "$*" | tee -a "$SUMMARY"; }

# step NAME TIMEOUT_S CMD...: runs CMD with a deadline, its output in OUT_DIR/NAME.txt.
step() {
  local name=$1 limit=$2
  shift 2
  local start=$SECONDS
  timeout "$limit" "$@" > "$OUT_DIR/$name.txt" 2>&1
  local rc=$?
  local took=$((SECONDS - start))
  if [ $rc -eq 0 ]; then
    say "ok      $name (${took}s)"
  elif [ $rc -eq 124 ]; then
    say "timeout $name: no answer within ${limit}s"
  else
    say "could not $name (exit $rc): $(tail -n 1 "$OUT_DIR/$name.txt")"
  fi
  return $rc
}

say "gpusoak GPU smoke: $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(uname -n), kernel $(uname -r)"
if ! "$PY" -c 'import gpusoak' 2> "$OUT_DIR/import.txt"; then
  say "could not import gpusoak from $PWD with $PY: $(tail -n 1 "$OUT_DIR/import.txt")"
  exit 2
fi
step python 30 "$PY" - <<'PY'
import importlib, sys
print(sys.version.split()[0])
for name in ("pynvml", "numpy", "cupy", "tenacity", "pytest", "pytest_html"):
    try:
        mod = importlib.import_module(name)
        print(f"{name} {getattr(mod, '__version__', '?')}")
    except Exception as err:  # what is missing is a finding, not a failure
        print(f"{name} missing: {type(err).__name__}: {err}")
PY

# -- nvidia-smi (read-only queries) ---------------------------------------------------------------
GPUS=""
if command -v nvidia-smi > /dev/null; then
  step nvidia-smi-L 60 nvidia-smi -L
  step nvidia-smi-q 120 nvidia-smi -q
  if step nvidia-smi-gpus 60 nvidia-smi --query-gpu=pci.bus_id,uuid,name,driver_version,mig.mode.current,persistence_mode,compute_mode --format=csv,noheader; then
    GPUS=$(cut -d, -f1 "$OUT_DIR/nvidia-smi-gpus.txt" | tr -d ' ')
  fi
else
  say "no nvidia-smi on PATH: NVIDIA's tools are not installed here, or not visible to this process"
fi

# -- NVML through gpusoak's query child (what the soak itself uses) -----------------------------
# The child exits 0 with {"ok": false, ...} when NVML could not answer: that is a "could not" too.
nvml() {
  local name=$1
  shift
  step "$name" 60 "$PY" - "$@" <<'PY'
import json, subprocess, sys
done = subprocess.run([sys.executable, "-m", "gpusoak.host.nvml_child", *sys.argv[1:]],
                      capture_output=True, text=True, timeout=55)
print(done.stdout.strip() or done.stderr.strip())
doc = json.loads(done.stdout.strip().splitlines()[-1]) if done.stdout.strip() else {}
if not doc.get("ok"):
    raise SystemExit(f"NVML: {doc.get('message') or done.stderr.strip() or 'no answer'}")
PY
}
nvml nvml-driver driver
for bus in $GPUS; do
  for op in health minor pids arch; do
    nvml "nvml-$op-$bus" "$op" "$bus"
  done
done

# -- sysfs, holders and the kernel log (reads only) -------------------------------------------------
step sysfs 60 "$PY" - $GPUS <<'PY'
import os, sys
from gpusoak.host.sysfs import Sysfs
from gpusoak.model import PciAddress
sysfs = Sysfs("/sys")
if not os.path.isdir("/sys/bus/pci/devices"):
    sys.exit("no /sys/bus/pci/devices: PCI sysfs is not visible here (a sandbox or container)")
found = sysfs.nvidia_gpus()
print("NVIDIA GPU functions in sysfs:", ", ".join(map(str, found)) or "none")
for text in sys.argv[1:] or [str(b) for b in found]:
    bdf = PciAddress.parse(text)
    fn = sysfs.function(bdf)
    if not fn.present:
        print(f"{bdf}: not in /sys/bus/pci/devices (nvidia-smi sees it; this view of sysfs does not)")
        continue
    link = fn.link
    print(f"{bdf}: driver {fn.driver}, power {fn.power_state}, reset_method {fn.reset_methods}, "
          f"link x{link.current_width if link else '?'} {link.current_speed if link else '?'}, "
          f"upstream port {fn.upstream_port}, iommu group {fn.iommu_group}")
PY
step holders 60 "$PY" - <<'PY'
from gpusoak.host import procs
try:
    scan = procs.scan_holders({(procs.NVIDIA_MAJOR, procs.ANY_MINOR): "an NVIDIA device"})
except Exception as err:
    raise SystemExit(f"cannot look for holders: {err}")
for h in scan.holders:
    print(f"pid {h.pid} holds {h.path}")
print(f"{len(scan.holders)} process(es) hold an NVIDIA device file; {len(scan.unreadable)} unreadable")
PY
step kmsg 30 "$PY" - <<'PY'
import os
try:
    fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
except OSError as err:
    raise SystemExit(f"cannot open /dev/kmsg: {err.strerror}: the kernel-log checks could not look here")
lines = 0
try:
    while lines < 100000:
        try:
            os.read(fd, 8192)
        except BlockingIOError:
            break
        except BrokenPipeError:
            continue  # a record was overwritten while reading: the next read goes on
        lines += 1
finally:
    os.close(fd)
print(f"/dev/kmsg readable: {lines} records")
PY

# -- one load child on the first GPU -------------------------------------------------------------
first=$(echo "$GPUS" | head -n 1)
if [ -n "$first" ]; then
  uuid=$(grep -i "^$first," "$OUT_DIR/nvidia-smi-gpus.txt" | cut -d, -f2 | tr -d ' ')
  # Only its own GPU, as the soak starts it (gpusoak/load/child.py).
  step load 300 env CUDA_VISIBLE_DEVICES="$uuid" CUDA_DEVICE_ORDER=PCI_BUS_ID \
    "$PY" -m gpusoak.load --bdf "$first" --seconds "$LOAD_SECONDS" --fraction 0.5
  tail -n 1 "$OUT_DIR/load.txt" >> "$SUMMARY"
else
  say "no GPU to load: nvidia-smi listed none"
fi

# -- what gpusoak itself would do here (read-only) ------------------------------------------------
step inspect 180 "$PY" -m gpusoak.cli inspect --backend real --json
step plan 180 "$PY" -m gpusoak.cli plan --backend real --actions flr,gpu_reset,rebind,module_reload
say "done: $OUT_DIR"
exit 0

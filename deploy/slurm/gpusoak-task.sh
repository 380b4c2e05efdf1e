#!/usr/bin/env bash
# One node's task: run gpusoak on this node and keep its reports under the run's shared folder.
# Exits 0 whenever the reports were written (the decision is in result.json, not the exit code).
set -uo pipefail
node="${SLURMD_NODENAME:?not inside a Slurm job step}"
out="$GPUSOAK_RESULTS/$GPUSOAK_RUN/$node"
# A requeued job (a node failed, scontrol requeue) runs its script again from the start
# (slurm_requeue(3)), with SLURM_RESTART_COUNT set to the number of restarts (sbatch(1), OUTPUT
# ENVIRONMENT VARIABLES; srun passes it on to this task). Its run gets a folder of its own beside
# the first, which gpusoak would refuse: it holds that run. `gpusoak fleet` takes each node's latest.
restarts="${SLURM_RESTART_COUNT:-0}"
case "$restarts" in ''|0|*[!0-9]*) ;; *) out="$out.requeue-$restarts" ;; esac
backend="${GPUSOAK_BACKEND:-real}"
backend="${backend//%n/$node}"
args=(run --backend "$backend" --profile "${GPUSOAK_PROFILE:-acceptance}" --node-name "$node" --report-dir "$out" -q)
# The node's GPU inventory across reboots, on the node itself: a GPU missing from it fails the run.
[ "$backend" = real ] && args+=(--inventory "${GPUSOAK_INVENTORY:-/var/lib/gpusoak/inventory.json}")
# Resets on a real node happen only with GPUSOAK_DESTRUCTIVE=1 in the submitting environment
# (gpusoak reads it); without it the run is read-only and every cycle says it was not authorised.
mkdir -p "$out"
started="$out/.gpusoak-task-started"
: > "$started"
"${GPUSOAK:-gpusoak}" "${args[@]}" "$@" >> "$out/gpusoak.log" 2>&1
code=$?
# This run's result only: a refused run (exit 2, a folder that holds a run) leaves an earlier one.
[ -f "$out/result.json" ] && [ "$out/result.json" -nt "$started" ] && exit 0
echo "gpusoak on $node exited $code without a result; see $out/gpusoak.log" >&2
exit "$code"

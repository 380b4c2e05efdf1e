#!/usr/bin/env bash
# One node's task: run gpusoak on this node and keep its reports under the run's shared folder.
# Exits 0 whenever the reports were written (the decision is in result.json, not the exit code).
set -uo pipefail
node="${SLURMD_NODENAME:?not inside a Slurm job step}"
out="$GPUSOAK_RESULTS/$GPUSOAK_RUN/$node"
backend="${GPUSOAK_BACKEND:-real}"
backend="${backend//%n/$node}"
args=(run --backend "$backend" --profile "${GPUSOAK_PROFILE:-acceptance}" --node-name "$node" --report-dir "$out" -q)
# Resets on a real node happen only with GPUSOAK_DESTRUCTIVE=1 in the submitting environment
# (gpusoak reads it); without it the run is read-only and every cycle says it was not authorised.
mkdir -p "$out"
"${GPUSOAK:-gpusoak}" "${args[@]}" "$@" > "$out/gpusoak.log" 2>&1
code=$?
[ -f "$out/result.json" ] && exit 0
echo "gpusoak on $node exited $code without a result; see $out/gpusoak.log" >&2
exit "$code"

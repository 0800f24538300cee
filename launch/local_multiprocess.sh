#!/usr/bin/env bash
# Tries multi-host training on one machine: N processes x M CPU devices on
# localhost, gloo collectives. Every argument after the counts goes to
# diffusion_jax.main. Logs: WORKDIR/process_I.log.
#
#   bash launch/local_multiprocess.sh 2 2 --mode=train \
#     --config=configs/shapes_class_cond.py:quick --workdir=runs/multi
set -euo pipefail
[ $# -ge 3 ] || { echo "usage: $0 NUM_PROCESSES DEVICES_PER_PROCESS MAIN_ARGS..." >&2; exit 2; }
num_processes=$1; devices=$2; shift 2
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-$root/.venv/bin/python}"
. "$root/launch/tcmalloc.sh"
preload_tcmalloc
port="${PORT:-$((20000 + RANDOM % 20000))}"
workdir=$(printf '%s\n' "$@" | sed -n 's/^--workdir=//p' | tail -1)
mkdir -p "${workdir:-.}"
pids=()
for ((i = 0; i < num_processes; i++)); do
  XLA_FLAGS="--xla_force_host_platform_device_count=$devices" JAX_PLATFORMS=cpu \
    "$python" -m diffusion_jax.main "$@" --coordinator_address="localhost:$port" \
    --num_processes="$num_processes" --process_id="$i" \
    > "${workdir:-.}/process_$i.log" 2>&1 &
  pids+=($!)
done
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
echo "all $num_processes processes finished (status $status); logs in ${workdir:-.}/process_*.log"
exit $status

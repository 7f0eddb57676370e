#!/usr/bin/env bash
# Run training on this machine: one process, or N local processes as a simulated multi-host run.
#
#   launch/local.sh [--entry=curriculum|train] [--config=configs/curriculum.py:tiny] [--workdir=runs/curriculum]
#                   [--num_processes=1] [--devices_per_process=N] [--port=8476] [--cpu] [--dry_run]
#                   [--config.FIELD=VALUE ...] [-- more launcher flags]
#
# --dry_run prints the exact commands (one per line, shell-quoted) and runs nothing. With --num_processes > 1
# the processes meet at localhost:PORT through the launchers' --coordinator_address/--num_processes/--process_id
# (parallel/distributed.py); --cpu with --devices_per_process=N gives each process N simulated CPU devices, the way
# tests/test_multiprocess.py checks that 2 x 4 devices train like 1 x 8. Environment: PYTHON (default: the repo's
# .venv/bin/python if present, else python3).
set -euo pipefail

usage() { sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//'; }

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ENTRY=curriculum
CONFIG=configs/curriculum.py:tiny
WORKDIR=runs/curriculum
NUM_PROCESSES=1
DEVICES_PER_PROCESS=""
PORT=8476
CPU=0
DRY_RUN=0
EXTRA=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --entry=*) ENTRY="${1#*=}" ;;
    --config=*) CONFIG="${1#*=}" ;;
    --workdir=*) WORKDIR="${1#*=}" ;;
    --num_processes=*) NUM_PROCESSES="${1#*=}" ;;
    --devices_per_process=*) DEVICES_PER_PROCESS="${1#*=}" ;;
    --port=*) PORT="${1#*=}" ;;
    --cpu) CPU=1 ;;
    --dry_run) DRY_RUN=1 ;;
    --config.*) EXTRA+=("$1") ;;
    --) shift; EXTRA+=("$@"); break ;;
    -h|--help) usage; exit 0 ;;
    *) echo "local.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
  shift
done
case "$ENTRY" in curriculum|train) ;; *) echo "local.sh: --entry must be curriculum or train, got $ENTRY" >&2; exit 2 ;; esac
[[ "$NUM_PROCESSES" =~ ^[1-9][0-9]*$ ]] || { echo "local.sh: --num_processes must be a positive integer" >&2; exit 2; }

if [[ -z "${PYTHON:-}" ]]; then
  if [[ -x "$REPO/.venv/bin/python" ]]; then PYTHON="$REPO/.venv/bin/python"; else PYTHON=python3; fi
fi

# Prints (dry run) or runs one command; a trailing '&' argument runs it in the background.
show() { local s; s="$(printf '%q ' "$@")"; echo "${s% }"; }
run() {
  local bg=0
  if [[ "${!#}" == "&" ]]; then bg=1; set -- "${@:1:$#-1}"; fi
  if [[ $DRY_RUN == 1 ]]; then show "$@"; elif [[ $bg == 1 ]]; then "$@" & else "$@"; fi
}

ENVS=()
[[ $CPU == 1 ]] && ENVS+=(JAX_PLATFORMS=cpu)
[[ -n "$DEVICES_PER_PROCESS" ]] && ENVS+=("XLA_FLAGS=--xla_force_host_platform_device_count=$DEVICES_PER_PROCESS")
CMD=("$PYTHON" "launch/$ENTRY.py" "--config=$CONFIG" "--workdir=$WORKDIR" "${EXTRA[@]}")
[[ ${#ENVS[@]} -gt 0 ]] && CMD=(env "${ENVS[@]}" "${CMD[@]}")

cd "$REPO"
if [[ "$NUM_PROCESSES" == 1 ]]; then
  run "${CMD[@]}"
  exit 0
fi
pids=()
for ((i = 0; i < NUM_PROCESSES; i++)); do
  run "${CMD[@]}" "--coordinator_address=localhost:$PORT" "--num_processes=$NUM_PROCESSES" \
    "--process_id=$i" "&"
  [[ $DRY_RUN == 1 ]] || pids+=($!)
done
[[ $DRY_RUN == 1 ]] && exit 0
status=0
for pid in "${pids[@]}"; do wait "$pid" || status=$?; done
exit "$status"

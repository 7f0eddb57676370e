#!/usr/bin/env bash
# Cloud TPU: create a TPU VM slice, install the project on every host, train on all hosts, delete it; or an xpk
# workload on a GKE TPU cluster.
#
#   launch/tpu_pod.sh COMMAND [options] [--config.FIELD=VALUE ...] [-- more launcher flags]
#
# Commands:
#   create   gcloud compute tpus tpu-vm create NAME (--accelerator_type, --runtime_version, --spot)
#   setup    copy this checkout (git archive HEAD) to every host and pip install it into ~/dreamactor_jax/.venv
#   run      start the launcher on every host at once (ssh --worker=all); each host learns its process id and
#            the coordinator (host 0) from the TPU VM metadata server and passes them as DREAMACTOR_* variables
#   delete   gcloud compute tpus tpu-vm delete NAME
#   xpk      xpk workload create on a GKE cluster (--cluster, --docker_image); GKE sets TPU_WORKER_HOSTNAMES and
#            TPU_WORKER_ID, which parallel/distributed.py detects, so the command carries no multi-host flags
#
# Options (flag, else environment variable, else default):
#   --project=$PROJECT  --zone=$ZONE (us-east5-a)  --name=$TPU_NAME (dreamactor)
#   --accelerator_type=$ACCELERATOR_TYPE (v5p-16)  --runtime_version=$RUNTIME_VERSION (v2-alpha-tpuv5)
#   --num_hosts=$NUM_HOSTS (run: default read from the metadata server)  --port=$PORT (8476)
#   --entry=curriculum|train (curriculum)  --config=$CONFIG (configs/curriculum_wan14b.py:full,v5p,480p)
#   --workdir=$WORKDIR (required by run/xpk; a directory every host sees, e.g. a gcsfuse or Filestore mount)
#   --remote_dir=~/dreamactor_jax  --python=python3.11 (setup)  --spot (create)
#   --cluster=$XPK_CLUSTER  --docker_image=$DOCKER_IMAGE  --num_slices=1 (xpk; N > 1 adds --config.mesh.dcn_data=N)
#   --dry_run: print the exact commands (one per line, shell-quoted) and run nothing
#
# run and xpk export, on every host, LIBTPU_INIT_ARGS = the recommended flags of launch/perf_flags.sh (one line,
# each flag explained there; multi-slice ones when --num_slices > 1) followed by your own $LIBTPU_INIT_ARGS, and
# DREAMACTOR_COMPILATION_CACHE = $DREAMACTOR_COMPILATION_CACHE or WORKDIR/xla_cache (a restart after a preemption
# loads the compiled step instead of recompiling it). DREAMACTOR_PERF_FLAGS=0 leaves LIBTPU_INIT_ARGS as it is.
set -euo pipefail

usage() { sed -n '2,32p' "$0" | sed 's/^# \{0,1\}//'; }
die() { echo "tpu_pod.sh: $*" >&2; exit 2; }

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=launch/perf_flags.sh
source "$REPO/launch/perf_flags.sh"
[[ $# -ge 1 ]] || { usage >&2; exit 2; }
COMMAND="$1"
shift
case "$COMMAND" in
  create|setup|run|delete|xpk) ;;
  -h|--help) usage; exit 0 ;;
  *) die "unknown command $COMMAND (create|setup|run|delete|xpk)" ;;
esac

PROJECT="${PROJECT:-}"
ZONE="${ZONE:-us-east5-a}"
NAME="${TPU_NAME:-dreamactor}"
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v5p-16}"
RUNTIME_VERSION="${RUNTIME_VERSION:-v2-alpha-tpuv5}"
NUM_HOSTS="${NUM_HOSTS:-}"
PORT="${PORT:-8476}"
ENTRY=curriculum
CONFIG="${CONFIG:-configs/curriculum_wan14b.py:full,v5p,480p}"
WORKDIR="${WORKDIR:-}"
REMOTE_DIR='~/dreamactor_jax'
REMOTE_PYTHON=python3.11
SPOT=0
CLUSTER="${XPK_CLUSTER:-}"
DOCKER_IMAGE="${DOCKER_IMAGE:-}"
NUM_SLICES=1
DRY_RUN=0
EXTRA=()
while [[ $# -gt 0 ]]; do
  case "$1" in
    --project=*) PROJECT="${1#*=}" ;;
    --zone=*) ZONE="${1#*=}" ;;
    --name=*) NAME="${1#*=}" ;;
    --accelerator_type=*) ACCELERATOR_TYPE="${1#*=}" ;;
    --runtime_version=*) RUNTIME_VERSION="${1#*=}" ;;
    --num_hosts=*) NUM_HOSTS="${1#*=}" ;;
    --port=*) PORT="${1#*=}" ;;
    --entry=*) ENTRY="${1#*=}" ;;
    --config=*) CONFIG="${1#*=}" ;;
    --workdir=*) WORKDIR="${1#*=}" ;;
    --remote_dir=*) REMOTE_DIR="${1#*=}" ;;
    --python=*) REMOTE_PYTHON="${1#*=}" ;;
    --spot) SPOT=1 ;;
    --cluster=*) CLUSTER="${1#*=}" ;;
    --docker_image=*) DOCKER_IMAGE="${1#*=}" ;;
    --num_slices=*) NUM_SLICES="${1#*=}" ;;
    --dry_run) DRY_RUN=1 ;;
    --config.*) EXTRA+=("$1") ;;
    --) shift; EXTRA+=("$@"); break ;;
    -h|--help) usage; exit 0 ;;
    *) die "unknown argument $1 (see --help)" ;;
  esac
  shift
done
case "$ENTRY" in curriculum|train) ;; *) die "--entry must be curriculum or train, got $ENTRY" ;; esac
[[ -z "$NUM_HOSTS" || "$NUM_HOSTS" =~ ^[1-9][0-9]*$ ]] || die "--num_hosts must be a positive integer"
if [[ "$COMMAND" == run || "$COMMAND" == xpk ]]; then
  [[ -n "$WORKDIR" ]] || die "$COMMAND needs --workdir (or WORKDIR=...): a directory every host sees"
fi

show() { local s; s="$(printf '%q ' "$@")"; echo "${s% }"; }
run() { if [[ $DRY_RUN == 1 ]]; then show "$@"; else "$@"; fi; }

GCLOUD_WHERE=("--zone=$ZONE")
[[ -n "$PROJECT" ]] && GCLOUD_WHERE+=("--project=$PROJECT")
TPU=(gcloud compute tpus tpu-vm)

# The launcher command line, quoted for a remote shell. Several slices: data parallelism across them over DCN
# (config.mesh.dcn_data, parallel/mesh.py) unless the overrides place the DCN axes themselves.
launcher() {
  local dcn=()
  if (( NUM_SLICES > 1 )) && [[ " ${EXTRA[*]} " != *" --config.mesh.dcn_"* ]]; then
    dcn=("--config.mesh.dcn_data=$NUM_SLICES")
  fi
  show python "launch/$ENTRY.py" "--config=$CONFIG" "--workdir=$WORKDIR" "${dcn[@]}" "${EXTRA[@]}"
}

# The performance environment every host gets (see the header), as a remote-shell 'export ...' statement.
perf_env() {
  local args="${LIBTPU_INIT_ARGS:-}" extra=(offload)
  (( NUM_SLICES > 1 )) && extra+=(multislice)
  if [[ "${DREAMACTOR_PERF_FLAGS:-1}" != 0 ]]; then
    args="$(dreamactor_tpu_args "${extra[@]}")${args:+ $args}"
  fi
  show export "LIBTPU_INIT_ARGS=$args" "DREAMACTOR_COMPILATION_CACHE=$(dreamactor_cache_dir "$WORKDIR")"
}

case "$COMMAND" in
  create)
    args=("${TPU[@]}" create "$NAME" "${GCLOUD_WHERE[@]}" "--accelerator-type=$ACCELERATOR_TYPE"
          "--version=$RUNTIME_VERSION")
    [[ $SPOT == 1 ]] && args+=(--spot)
    run "${args[@]}"
    ;;
  setup)
    archive="/tmp/dreamactor_jax-$NAME.tar.gz"
    run git -C "$REPO" archive --format=tar.gz -o "$archive" HEAD
    run "${TPU[@]}" scp "$archive" "$NAME:dreamactor_jax.tar.gz" "${GCLOUD_WHERE[@]}" --worker=all
    run "${TPU[@]}" ssh "$NAME" "${GCLOUD_WHERE[@]}" --worker=all "--command=mkdir -p $REMOTE_DIR && tar -xzf \
~/dreamactor_jax.tar.gz -C $REMOTE_DIR && cd $REMOTE_DIR && $REMOTE_PYTHON -m venv .venv && . .venv/bin/activate \
&& pip install -q -e '.[tpu]'"
    ;;
  run)
    # Evaluated on each host (single quotes keep them from this shell): the TPU VM metadata server knows this
    # host's index and every host's address (JAX's own GceTpuCluster reads the same two attributes).
    md='curl -sf -H Metadata-Flavor:Google http://metadata.google.internal/computeMetadata/v1/instance/attributes'
    hosts="\$($md/worker-network-endpoints | awk -F, '{print NF}')"
    [[ -n "$NUM_HOSTS" ]] && hosts="$NUM_HOSTS"
    remote="cd $REMOTE_DIR && . .venv/bin/activate && export DREAMACTOR_NUM_PROCESSES=$hosts \
DREAMACTOR_PROCESS_ID=\$($md/agent-worker-number) \
DREAMACTOR_COORDINATOR=\$($md/worker-network-endpoints | cut -d, -f1 | awk -F: '{print \$NF}'):$PORT && $(perf_env) \
&& $(launcher)"
    run "${TPU[@]}" ssh "$NAME" "${GCLOUD_WHERE[@]}" --worker=all "--command=$remote"
    ;;
  delete)
    run "${TPU[@]}" delete "$NAME" "${GCLOUD_WHERE[@]}" --quiet
    ;;
  xpk)
    [[ -n "$CLUSTER" ]] || die "xpk needs --cluster (or XPK_CLUSTER=...)"
    [[ -n "$DOCKER_IMAGE" ]] || die "xpk needs --docker_image (an image holding this repo installed with .[tpu])"
    args=(xpk workload create "--cluster=$CLUSTER" "--workload=$NAME" "--tpu-type=$ACCELERATOR_TYPE"
          "--num-slices=$NUM_SLICES" "--docker-image=$DOCKER_IMAGE" "--zone=$ZONE")
    [[ -n "$PROJECT" ]] && args+=("--project=$PROJECT")
    run "${args[@]}" "--command=$(perf_env) && $(launcher)"
    ;;
esac

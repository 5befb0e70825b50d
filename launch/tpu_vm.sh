#!/usr/bin/env bash
# Train on a Cloud TPU VM -- one host (v4-8, v5litepod-8, v6e-8) or a pod slice (v4-32, ...) --
# from this checkout, with gcloud. Every worker runs the same command; JAX finds the other
# workers by itself (`--config.distributed=True` -> a bare jax.distributed.initialize()).
#
#   launch/tpu_vm.sh create             create the TPU VM; reuse it only when it is READY (a
#                                       PREEMPTED or TERMINATED one is deleted and recreated)
#   launch/tpu_vm.sh setup              copy this checkout to every worker, create a Python
#                                       >= 3.11 environment there (the TPU images' system Python
#                                       is older) and pip install ".[tpu]" into it
#   launch/tpu_vm.sh train [ARGS...]    start the run on all workers in the background; extra
#                                       ARGS go to sslocr_jax.main (--config.FIELD=VALUE ...)
#   launch/tpu_vm.sh logs               stream worker 0's log (Ctrl-C stops streaming only)
#   launch/tpu_vm.sh copy               upload a local workdir (BUCKET unset at train time is
#                                       single host only) to gs://$BUCKET/runs/$RUN
#   launch/tpu_vm.sh status | stop | delete | ssh 'CMD'
#   launch/tpu_vm.sh all [ARGS...]      create, setup, train, logs
#
# DRY_RUN=1 (or `--dry-run` as the first argument) prints every command, gcloud and remote
# shell, without running any: review it before spending TPU time. The answers it cannot ask
# gcloud for come from DRY_RUN_STATE [NONE: no such VM] and DRY_RUN_WORKERS [1].
#
# Settings, from the environment (defaults in brackets):
#   TPU_NAME [sslocr-tpu]  ACCELERATOR_TYPE [v4-8]  ZONE [a zone that has ACCELERATOR_TYPE:
#   v4 us-central2-b, v5litepod us-west4-a, v5p us-east5-a, v6e us-east5-b]
#   RUNTIME_VERSION [picked from the accelerator]  PROJECT [gcloud's default]  SPOT [0]
#   AUTOCHECKPOINT [1: --autocheckpoint-enabled (v2-v4, v5e): a maintenance event sends the
#   run SIGTERM first, it saves a checkpoint and exits; rerun `all` to resume]
#   BUCKET [none; required with several workers]  RUN [dig-<accelerator>]
#   WORKDIR [gs://$BUCKET/runs/$RUN with a bucket (orbax and tensorstore write to GCS
#   natively; kept across preemptions, shared by every worker), else ~/runs/$RUN on the VM]
#   CONFIG [configs/dig.py]  EXTRA [pip extra: tpu]  PYTHON_VERSION [3.11]
#
# Example: a ViT-Small DiG run on a v4-32 slice (4 workers), FSDP inside each host:
#   BUCKET=my-bucket ACCELERATOR_TYPE=v4-32 launch/tpu_vm.sh all --config.mesh.fsdp=4
# Rerunning `all` (or `train`) with the same RUN resumes from the last checkpoint in the workdir.
set -euo pipefail

DRY_RUN="${DRY_RUN:-0}"
if [[ "${1:-}" == "--dry-run" ]]; then DRY_RUN=1; shift; fi
TPU_NAME="${TPU_NAME:-sslocr-tpu}"
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v4-8}"
PROJECT="${PROJECT:-}"
SPOT="${SPOT:-0}"
AUTOCHECKPOINT="${AUTOCHECKPOINT:-1}"
BUCKET="${BUCKET:-}"
BUCKET="${BUCKET#gs://}"
RUN="${RUN:-dig-${ACCELERATOR_TYPE}}"
CONFIG="${CONFIG:-configs/dig.py}"
EXTRA="${EXTRA:-tpu}"
PYTHON_VERSION="${PYTHON_VERSION:-3.11}"
REMOTE_DIR='$HOME/sslocr_jax'            # the checkout on each worker
VENV='$HOME/sslocr_venv'                 # its Python >= 3.11 environment
UV='$HOME/.local/bin/uv'                 # uv: fetches a standalone Python, installs fast
LOG='$HOME/sslocr_logs/'"${RUN}.log"
PID='$HOME/sslocr_logs/'"${RUN}.pid"     # the run's process id on each worker (for `stop`)
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

default_zone() {  # a zone that offers the accelerator (cloud.google.com/tpu/docs/regions-zones)
  case "$ACCELERATOR_TYPE" in
    v6e-*) echo "us-east5-b" ;;
    v5litepod-*|v5e-*) echo "us-west4-a" ;;
    v5p-*) echo "us-east5-a" ;;
    v4-*) echo "us-central2-b" ;;
    *) echo "us-central1-b" ;;
  esac
}
ZONE="${ZONE:-$(default_zone)}"

default_runtime() {  # TPU software version for the accelerator generation
  case "$ACCELERATOR_TYPE" in
    v6e-*) echo "v2-alpha-tpuv6e" ;;
    v5litepod-*|v5e-*) echo "v2-alpha-tpuv5-lite" ;;
    v5p-*) echo "v2-alpha-tpuv5" ;;
    *) echo "tpu-ubuntu2204-base" ;;
  esac
}
RUNTIME_VERSION="${RUNTIME_VERSION:-$(default_runtime)}"

if [[ -n "${WORKDIR:-}" ]]; then
  :
elif [[ -n "$BUCKET" ]]; then
  WORKDIR="gs://${BUCKET}/runs/${RUN}"
else
  WORKDIR='$HOME/runs/'"${RUN}"
fi

quote() {  # one shell word per argument, readable: 'quoted' only where needed
  local out=() a
  for a in "$@"; do
    if [[ "$a" =~ ^[A-Za-z0-9_./:=,@+%-]+$ ]]; then out+=("$a"); else out+=("'${a//\'/\'\\\'\'}'"); fi
  done
  echo "${out[*]}"
}

run() {  # prints the command; runs it unless DRY_RUN=1
  echo "+ $(quote "$@")"
  [[ "$DRY_RUN" == 1 ]] || "$@"
}

gc() {  # gcloud [alpha] compute tpus tpu-vm SUBCOMMAND ... with zone/project
  local sub="$1"; shift
  run gcloud compute tpus tpu-vm "$sub" "$@" --zone="$ZONE" ${PROJECT:+--project="$PROJECT"}
}

on_workers() {  # on_workers WORKER 'command': run a shell command on one worker or on "all"
  gc ssh "$TPU_NAME" --worker="$1" --command="$2"
}

query_state() {  # VM_STATE: READY, PREEMPTED, CREATING, ... or NONE when there is no such VM
  local cmd=(gcloud compute tpus tpu-vm describe "$TPU_NAME" --zone="$ZONE"
             ${PROJECT:+--project="$PROJECT"} --format='value(state)')
  echo "+ $(quote "${cmd[@]}")"
  if [[ "$DRY_RUN" == 1 ]]; then VM_STATE="${DRY_RUN_STATE:-NONE}"; return; fi
  VM_STATE="$("${cmd[@]}" 2>/dev/null)" || VM_STATE=NONE
  VM_STATE="${VM_STATE:-NONE}"
}

query_workers() {  # NUM_WORKERS: hosts of the VM (one per network endpoint)
  local cmd=(gcloud compute tpus tpu-vm describe "$TPU_NAME" --zone="$ZONE"
             ${PROJECT:+--project="$PROJECT"} --format='value(networkEndpoints[].ipAddress)')
  echo "+ $(quote "${cmd[@]}")"
  if [[ "$DRY_RUN" == 1 ]]; then NUM_WORKERS="${DRY_RUN_WORKERS:-1}"; return; fi
  NUM_WORKERS="$("${cmd[@]}" | tr ';,' '\n\n' | grep -c .)"
}

cmd_create() {
  query_state
  case "$VM_STATE" in
    READY) echo "reusing TPU VM $TPU_NAME ($ZONE): READY"; return ;;
    NONE) ;;
    PREEMPTED|TERMINATED)
      echo "TPU VM $TPU_NAME is $VM_STATE: deleting it to recreate it"
      gc delete "$TPU_NAME" --quiet ;;
    *) echo "error: TPU VM $TPU_NAME is $VM_STATE (not READY); wait, or delete it" >&2
       exit 1 ;;
  esac
  echo "creating TPU VM $TPU_NAME: $ACCELERATOR_TYPE, $RUNTIME_VERSION, $ZONE"
  local opts=(--accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION")
  [[ "$SPOT" == 1 ]] && opts+=(--spot)
  if [[ "$AUTOCHECKPOINT" == 1 ]]; then  # a gcloud alpha flag (Cloud TPU Autocheckpoint)
    run gcloud alpha compute tpus tpu-vm create "$TPU_NAME" "${opts[@]}" \
      --autocheckpoint-enabled --zone="$ZONE" ${PROJECT:+--project="$PROJECT"}
  else
    gc create "$TPU_NAME" "${opts[@]}"
  fi
}

cmd_setup() {
  local archive="/tmp/sslocr_jax.tar.gz"
  [[ "$DRY_RUN" == 1 ]] || archive="$(mktemp -d)/sslocr_jax.tar.gz"
  # The committed tree plus uncommitted changes, without runs/ or .git.
  run tar -C "$REPO_ROOT" --exclude=.git --exclude=runs --exclude=__pycache__ -czf "$archive" .
  gc scp "$archive" "$TPU_NAME":/tmp/sslocr_jax.tar.gz --worker=all
  on_workers all "set -e; rm -rf ${REMOTE_DIR}; mkdir -p ${REMOTE_DIR} \$HOME/sslocr_logs; \
tar -C ${REMOTE_DIR} -xzf /tmp/sslocr_jax.tar.gz; \
[ -x ${UV} ] || curl -LsSf https://astral.sh/uv/install.sh | sh; \
[ -x ${VENV}/bin/python ] || ${UV} venv --python ${PYTHON_VERSION} ${VENV}; \
${VENV}/bin/python -c 'import sys; assert sys.version_info >= (3, 11), sys.version'; \
cd ${REMOTE_DIR} && ${UV} pip install -q --python ${VENV}/bin/python -e '.[${EXTRA}]'; \
${VENV}/bin/python -c 'import jax; print(jax.__version__, jax.local_devices())'"
}

cmd_train() {
  query_workers
  if (( NUM_WORKERS > 1 )) && [[ "$WORKDIR" != gs://* ]]; then
    echo "error: $NUM_WORKERS workers need a shared workdir: set BUCKET=<gcs bucket>" \
         "(WORKDIR=gs://BUCKET/runs/RUN)" >&2
    exit 1
  fi
  # printf %q keeps each extra argument one word on the remote shell.
  local args=""
  (( $# )) && args="$(printf ' %q' "$@")"
  echo "starting $RUN on $NUM_WORKERS worker(s): workdir $WORKDIR, log $LOG"
  on_workers all "cd ${REMOTE_DIR} && mkdir -p \$HOME/sslocr_logs && \
nohup ${VENV}/bin/python -m sslocr_jax.main --config=${CONFIG} --workdir=${WORKDIR} \
--config.distributed=True${args} > ${LOG} 2>&1 < /dev/null & echo \$! > ${PID}"
}

cmd_logs() {
  on_workers 0 "tail -n +1 -F ${LOG}"
}

cmd_copy() {
  [[ -n "$BUCKET" ]] || { echo "error: set BUCKET=<gcs bucket>" >&2; exit 1; }
  if [[ "$WORKDIR" == gs://* ]]; then
    echo "the workdir is in the bucket already: $WORKDIR"
    return
  fi
  on_workers 0 "gcloud storage rsync --recursive ${WORKDIR} gs://${BUCKET}/runs/${RUN}"
  echo "copied to gs://${BUCKET}/runs/${RUN}"
}

cmd_status() {
  gc describe "$TPU_NAME" --format='table(name.basename(), acceleratorType, state, health)'
  on_workers all "if [ -f ${PID} ] && kill -0 \$(cat ${PID}) 2>/dev/null; then \
echo \"running: pid \$(cat ${PID})\"; else echo 'not running'; fi; tail -n 2 ${LOG} 2>/dev/null || true"
}

cmd_stop() {  # SIGTERM: every process saves a checkpoint at the next agreed step, then exits
  on_workers all "[ -f ${PID} ] && kill -TERM \$(cat ${PID}) 2>/dev/null || true"
}

main() {
  local cmd="${1:-}"
  (( $# )) && shift
  case "$cmd" in
    create) cmd_create ;;
    setup) cmd_setup ;;
    train) cmd_train "$@" ;;
    logs) cmd_logs ;;
    copy) cmd_copy ;;
    status) cmd_status ;;
    stop) cmd_stop ;;
    delete) gc delete "$TPU_NAME" --quiet ;;
    ssh) on_workers all "$*" ;;
    all) cmd_create; cmd_setup; cmd_train "$@"; cmd_logs ;;
    *) awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"; exit 2 ;;
  esac
}

main "$@"

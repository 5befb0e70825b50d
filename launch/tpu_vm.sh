#!/usr/bin/env bash
# Train on a Cloud TPU VM -- one host (v4-8, v5litepod-8, v6e-8) or a pod slice (v4-32, ...) --
# from this checkout, with gcloud. Every worker runs the same command; JAX finds the other
# workers by itself (`--config.distributed=True` -> a bare jax.distributed.initialize()).
#
#   launch/tpu_vm.sh create             create the TPU VM, or reuse it if it exists
#   launch/tpu_vm.sh setup              copy this checkout to every worker, pip install ".[tpu]",
#                                       mount $BUCKET with gcsfuse (needed for several workers)
#   launch/tpu_vm.sh train [ARGS...]    start the run on all workers in the background; extra
#                                       ARGS go to sslocr_jax.main (--config.FIELD=VALUE ...)
#   launch/tpu_vm.sh logs               stream worker 0's log (Ctrl-C stops streaming only)
#   launch/tpu_vm.sh copy               copy the workdir (checkpoints, metrics, samples) to
#                                       gs://$BUCKET/runs/$RUN (single host; with gcsfuse the
#                                       workdir is already in the bucket)
#   launch/tpu_vm.sh status | stop | delete | ssh 'CMD'
#   launch/tpu_vm.sh all [ARGS...]      create, setup, train, logs
#
# Settings, from the environment (defaults in brackets):
#   TPU_NAME [sslocr-tpu]  ZONE [us-central2-b]  ACCELERATOR_TYPE [v4-8]
#   RUNTIME_VERSION [picked from the accelerator]  PROJECT [gcloud's default]  SPOT [0]
#   BUCKET [none; required with several workers]  RUN [dig-<accelerator>]
#   WORKDIR_IN_BUCKET [1: the workdir lives in the gcsfuse-mounted bucket, shared by all workers
#   and kept across preemptions; 0: on worker 0's disk (single host only), `copy` uploads it]
#   CONFIG [configs/dig.py]  EXTRA [pip extra: tpu]
#
# Example: a ViT-Small DiG run on a v4-32 slice (4 workers), bfloat16, FSDP inside each host:
#   BUCKET=my-bucket ACCELERATOR_TYPE=v4-32 launch/tpu_vm.sh all \
#       --config.dtype=bfloat16 --config.mesh.fsdp=4
# Rerunning `train` with the same RUN resumes from the last checkpoint in the workdir (after a
# preemption too, when the workdir is in the bucket).
set -euo pipefail

TPU_NAME="${TPU_NAME:-sslocr-tpu}"
ZONE="${ZONE:-us-central2-b}"
ACCELERATOR_TYPE="${ACCELERATOR_TYPE:-v4-8}"
PROJECT="${PROJECT:-}"
SPOT="${SPOT:-0}"
BUCKET="${BUCKET:-}"
BUCKET="${BUCKET#gs://}"
WORKDIR_IN_BUCKET="${WORKDIR_IN_BUCKET:-1}"
RUN="${RUN:-dig-${ACCELERATOR_TYPE}}"
CONFIG="${CONFIG:-configs/dig.py}"
EXTRA="${EXTRA:-tpu}"
REMOTE_DIR='$HOME/sslocr_jax'           # the checkout on each worker
MOUNT='$HOME/gcs'                  # gcsfuse mount of $BUCKET on each worker
LOG='$HOME/sslocr_logs/'"${RUN}.log"
PID='$HOME/sslocr_logs/'"${RUN}.pid"      # the run's process id on each worker (for `stop`)
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

default_runtime() {  # TPU software version for the accelerator generation
  case "$ACCELERATOR_TYPE" in
    v6e-*) echo "v2-alpha-tpuv6e" ;;
    v5litepod-*|v5e-*) echo "v2-alpha-tpuv5-lite" ;;
    v5p-*) echo "v2-alpha-tpuv5" ;;
    *) echo "tpu-ubuntu2204-base" ;;
  esac
}
RUNTIME_VERSION="${RUNTIME_VERSION:-$(default_runtime)}"

gc() {  # gcloud compute tpus tpu-vm SUBCOMMAND ... with zone/project
  local sub="$1"; shift
  gcloud compute tpus tpu-vm "$sub" "$@" --zone="$ZONE" ${PROJECT:+--project="$PROJECT"}
}

on_workers() {  # on_workers WORKER 'command': run a shell command on one worker or on "all"
  gc ssh "$TPU_NAME" --worker="$1" --command="$2"
}

num_workers() {
  gc describe "$TPU_NAME" --format='value(networkEndpoints[].ipAddress)' | tr ';,' '\n\n' |
    grep -c .
}

workdir() {  # the run folder, the same path on every worker
  if [[ -n "$BUCKET" && "$WORKDIR_IN_BUCKET" == 1 ]]; then echo "${MOUNT}/runs/${RUN}"; else echo '$HOME/runs/'"${RUN}"; fi
}

cmd_create() {
  if gc describe "$TPU_NAME" >/dev/null 2>&1; then
    echo "reusing TPU VM $TPU_NAME ($ZONE)"
    return
  fi
  echo "creating TPU VM $TPU_NAME: $ACCELERATOR_TYPE, $RUNTIME_VERSION, $ZONE"
  gc create "$TPU_NAME" --accelerator-type="$ACCELERATOR_TYPE" --version="$RUNTIME_VERSION" \
    $([[ "$SPOT" == 1 ]] && echo --spot)
}

cmd_setup() {
  local archive
  archive="$(mktemp -d)/sslocr_jax.tar.gz"
  # The committed tree plus uncommitted changes, without runs/ or .git.
  tar -C "$REPO_ROOT" --exclude=.git --exclude=runs --exclude='__pycache__' -czf "$archive" .
  gc scp "$archive" "$TPU_NAME":/tmp/sslocr_jax.tar.gz --worker=all
  on_workers all "set -e; rm -rf ${REMOTE_DIR}; mkdir -p ${REMOTE_DIR} \$HOME/sslocr_logs; \
    tar -C ${REMOTE_DIR} -xzf /tmp/sslocr_jax.tar.gz; \
    python3 -m pip install -q --upgrade pip; \
    cd ${REMOTE_DIR} && python3 -m pip install -q -e '.[${EXTRA}]'; \
    python3 -c 'import jax; print(jax.process_index(), jax.local_devices())'"
  if [[ -n "$BUCKET" ]]; then
    on_workers all "set -e; if ! command -v gcsfuse >/dev/null; then \
      echo 'deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt gcsfuse-'\$(lsb_release -cs)' main' | sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null; \
      curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null; \
      sudo apt-get -q update && sudo apt-get -q install -y gcsfuse; fi; \
      mkdir -p ${MOUNT}; mountpoint -q ${MOUNT} || \
      gcsfuse --implicit-dirs --rename-dir-limit=200000 ${BUCKET} ${MOUNT}"
  elif (( $(num_workers) > 1 )); then
    echo "warning: $TPU_NAME has several workers; set BUCKET so they share the workdir" >&2
  fi
}

cmd_train() {
  local n wd
  n="$(num_workers)"
  if (( n > 1 )) && [[ -z "$BUCKET" || "$WORKDIR_IN_BUCKET" != 1 ]]; then
    echo "error: $n workers need a shared workdir: set BUCKET=<gcs bucket> (and" \
         "WORKDIR_IN_BUCKET=1), then run setup" >&2
    exit 1
  fi
  wd="$(workdir)"
  # printf %q keeps each extra argument one word on the remote shell.
  local args=""
  (( $# )) && args="$(printf ' %q' "$@")"
  echo "starting $RUN on $n worker(s): workdir $wd, log $LOG"
  on_workers all "cd ${REMOTE_DIR} && mkdir -p \$HOME/sslocr_logs && \
    nohup python3 -m sslocr_jax.main --config=${CONFIG} --workdir=${wd} \
      --config.distributed=True${args} > ${LOG} 2>&1 < /dev/null & echo \$! > ${PID}"
}

cmd_logs() {
  on_workers 0 "tail -n +1 -F ${LOG}"
}

cmd_copy() {
  [[ -n "$BUCKET" ]] || { echo "error: set BUCKET=<gcs bucket>" >&2; exit 1; }
  if [[ "$(workdir)" == "${MOUNT}"* ]]; then
    echo "the workdir is in the bucket already: gs://${BUCKET}/runs/${RUN}"
    return
  fi
  on_workers 0 "gcloud storage rsync --recursive \$HOME/runs/${RUN} gs://${BUCKET}/runs/${RUN}"
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

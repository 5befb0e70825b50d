#!/usr/bin/env bash
# Train on NVIDIA GPUs: one GPU, all GPUs of one host, or several hosts.
#
#   launch/gpu.sh install               pip install -e ".[gpu]" (jax with CUDA 12 wheels) and
#                                       print the devices JAX sees
#   launch/gpu.sh train [ARGS...]       run sslocr_jax.main; ARGS go to it (--config.FIELD=...)
#   launch/gpu.sh check                 print process / device counts (same environment as train)
#
# One host: a single process drives every visible GPU (mesh data=-1 by default: data parallel;
# add --config.mesh.fsdp=N to shard params and optimizer state over N GPUs). Pick GPUs with
# CUDA_VISIBLE_DEVICES=0,1.
#
# Several hosts: run the same command on every host, one process per host, with
#   NUM_HOSTS=2 HOST_ID=<0..NUM_HOSTS-1> COORDINATOR=<host 0's address>:1234 launch/gpu.sh train
# which sets JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID for
# sslocr_jax.main (equivalently: --coordinator_address= --num_processes= --process_id=).
# Under SLURM (`srun --ntasks-per-node=1 launch/gpu.sh train ...`) leave them unset: JAX reads
# SLURM's variables. WORKDIR must be on a file system every host sees (NFS, Lustre, gcsfuse).
#
# Settings, from the environment (defaults in brackets):
#   CONFIG [configs/dig.py]  WORKDIR [runs/<config name>-gpu]  MEM_FRACTION [0.9]
#   NUM_HOSTS [1]  HOST_ID  COORDINATOR  (multi-host; or SLURM)  PYTHON [python3]
#
# Example, ViT-Small DiG in bfloat16 on the 8 GPUs of one host, FSDP over 8:
#   launch/gpu.sh train --config.dtype=bfloat16 --config.mesh.fsdp=8
set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
CONFIG="${CONFIG:-configs/dig.py}"
NAME="$(basename "${CONFIG%%:*}" .py)"
WORKDIR="${WORKDIR:-runs/${NAME}-gpu}"
NUM_HOSTS="${NUM_HOSTS:-1}"

# GPU memory: let XLA take MEM_FRACTION of each GPU up front (no fragmentation); overlap
# collectives with compute (XLA's latency-hiding scheduler, recommended by JAX and NVIDIA).
export XLA_PYTHON_CLIENT_MEM_FRACTION="${MEM_FRACTION:-0.9}"
export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_latency_hiding_scheduler=true"

distributed_args=()
if (( NUM_HOSTS > 1 )); then
  : "${HOST_ID:?set HOST_ID (0..NUM_HOSTS-1) on each host}"
  : "${COORDINATOR:?set COORDINATOR=<host 0 address>:<port>}"
  export JAX_COORDINATOR_ADDRESS="$COORDINATOR" JAX_NUM_PROCESSES="$NUM_HOSTS"
  export JAX_PROCESS_ID="$HOST_ID"
  distributed_args=(--config.distributed=True)
elif [[ -n "${SLURM_NTASKS:-}" && "${SLURM_NTASKS}" -gt 1 ]]; then
  distributed_args=(--config.distributed=True)  # jax.distributed reads SLURM_* itself
fi

cd "$REPO_ROOT"
case "${1:-}" in
  install)
    "$PYTHON" -m pip install -U pip
    "$PYTHON" -m pip install -e ".[gpu]"
    "$PYTHON" -c 'import jax; print(jax.__version__, jax.devices())'
    ;;
  check)
    "$PYTHON" - <<'PY'
import os
import jax
if os.environ.get("JAX_COORDINATOR_ADDRESS") or int(os.environ.get("SLURM_NTASKS", "1")) > 1:
  jax.distributed.initialize()
print(f"process {jax.process_index()}/{jax.process_count()}: "
      f"{jax.local_device_count()} local of {jax.device_count()} devices: {jax.local_devices()}")
PY
    ;;
  train)
    shift
    mkdir -p "$WORKDIR"
    exec "$PYTHON" -m sslocr_jax.main --config="$CONFIG" --workdir="$WORKDIR" \
      "${distributed_args[@]}" "$@"
    ;;
  *)
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"
    exit 2
    ;;
esac

#!/usr/bin/env bash
# Train on NVIDIA GPUs: one GPU, all GPUs of one host, or several hosts.
#
#   launch/gpu.sh install               pip install -e ".[gpu]" (jax with CUDA 12 wheels) and
#                                       print the devices JAX sees
#   launch/gpu.sh train [ARGS...]       run sslocr_jax.main; ARGS go to it (--config.FIELD=...)
#   launch/gpu.sh check                 print process / device counts (same environment as train)
#
# DRY_RUN=1 (or `--dry-run` as the first argument) prints the environment it sets and every
# command, without running them.
#
# One host: a single process drives every visible GPU (mesh data=-1 by default: data parallel;
# add --config.mesh.fsdp=N to shard params and optimizer state over N GPUs). Pick GPUs with
# CUDA_VISIBLE_DEVICES=0,1.
#
# Several hosts, one process per host driving all its GPUs: run on every host
#   NUM_HOSTS=2 HOST_ID=<0..NUM_HOSTS-1> COORDINATOR=<host 0's address>:1234 launch/gpu.sh train
# which sets JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID for sslocr_jax.main.
#
# SLURM: leave NUM_HOSTS unset (JAX reads SLURM's variables) and use either
#   srun --ntasks-per-node=1 launch/gpu.sh train ...          one process per node, all its GPUs
#   srun --ntasks-per-node=<GPUs per node> launch/gpu.sh train ...   one process per GPU
# With one task per node JAX's SLURM detection would restrict each process to GPU
# $SLURM_LOCALID (one GPU per node, silently); this script passes every local GPU explicitly
# (JAX_LOCAL_DEVICE_IDS) and tells sslocr_jax.main how many each process must see
# (SSLOCR_LOCAL_DEVICES): it prints the device count of every process at start and stops with
# an error when it differs.
#
# The workdir must be one folder every host sees: gs://bucket/run (written directly; install
# gcsfs), NFS, Lustre.
#
# NCCL (multi-host): JAX uses NCCL between GPUs; its network settings depend on the cluster and
# cannot be guessed here. Set them in the environment before `train`, as your site documents:
#   NCCL_SOCKET_IFNAME=<interface>     the NIC for bootstrap/socket traffic (e.g. eth0, ib0);
#                                      NCCL may pick a docker/loopback one otherwise
#   NCCL_IB_HCA=<mlx5_0,...>           InfiniBand/RoCE adapters to use; NCCL_IB_DISABLE=1 for
#                                      TCP only; NCCL_IB_GID_INDEX for RoCE
#   NCCL_NET_GDR_LEVEL, NCCL_P2P_LEVEL GPUDirect RDMA / peer-to-peer limits
#   cloud fabrics need their NCCL plugin and its variables: AWS EFA (aws-ofi-nccl,
#   FI_PROVIDER=efa), GCP A3 (GPUDirect-TCPX/TCPXO or gIB, set by the image's env script)
#   NCCL_DEBUG=INFO                    print what NCCL chose (first run on a new cluster)
#
# Settings, from the environment (defaults in brackets):
#   CONFIG [configs/dig.py]  WORKDIR [runs/<config name>-gpu]  MEM_FRACTION [0.9]
#   NUM_HOSTS [1]  HOST_ID  COORDINATOR  (multi-host; or SLURM)  PYTHON [python3]
#   GPUS [GPUs per host: CUDA_VISIBLE_DEVICES entries, else `nvidia-smi -L`]
#
# Example, ViT-Small DiG (bfloat16 compute by default on GPUs) on the 8 GPUs of one host,
# FSDP over 8:
#   launch/gpu.sh train --config.mesh.fsdp=8
set -euo pipefail

DRY_RUN="${DRY_RUN:-0}"
if [[ "${1:-}" == "--dry-run" ]]; then DRY_RUN=1; shift; fi
REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
CONFIG="${CONFIG:-configs/dig.py}"
NAME="$(basename "${CONFIG%%:*}" .py)"
WORKDIR="${WORKDIR:-runs/${NAME}-gpu}"
NUM_HOSTS="${NUM_HOSTS:-1}"

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

setenv() {  # setenv NAME VALUE: export, and print it
  export "$1=$2"
  echo "+ export $1=$(quote "$2")"
}

local_gpus() {  # GPUs this host has for us
  if [[ -n "${GPUS:-}" ]]; then
    echo "$GPUS"
  elif [[ -n "${CUDA_VISIBLE_DEVICES:-}" ]]; then
    tr ',' '\n' <<< "$CUDA_VISIBLE_DEVICES" | grep -c .
  elif command -v nvidia-smi >/dev/null; then
    nvidia-smi -L | grep -c '^GPU'
  else
    echo "error: no GPU found (no nvidia-smi); set GPUS=<GPUs per host>" >&2
    exit 1
  fi
}

# GPU memory: let XLA take MEM_FRACTION of each GPU up front (no fragmentation); overlap
# collectives with compute (XLA's latency-hiding scheduler, recommended by JAX and NVIDIA).
setenv XLA_PYTHON_CLIENT_MEM_FRACTION "${MEM_FRACTION:-0.9}"
setenv XLA_FLAGS "${XLA_FLAGS:+$XLA_FLAGS }--xla_gpu_enable_latency_hiding_scheduler=true"

distributed_args=()
if (( NUM_HOSTS > 1 )); then
  : "${HOST_ID:?set HOST_ID (0..NUM_HOSTS-1) on each host}"
  : "${COORDINATOR:?set COORDINATOR=<host 0 address>:<port>}"
  setenv JAX_COORDINATOR_ADDRESS "$COORDINATOR"
  setenv JAX_NUM_PROCESSES "$NUM_HOSTS"
  setenv JAX_PROCESS_ID "$HOST_ID"
  distributed_args=(--config.distributed=True)
elif [[ -n "${SLURM_NTASKS:-}" && "${SLURM_NTASKS}" -gt 1 ]]; then
  distributed_args=(--config.distributed=True)  # jax.distributed reads SLURM_* itself
fi

if [[ "${1:-}" == train || "${1:-}" == check ]]; then
  gpus="$(local_gpus)"
  tasks_per_node="${SLURM_NTASKS_PER_NODE:-1}"
  tasks_per_node="${tasks_per_node%%(*}"  # SLURM writes e.g. "8(x2)"
  if [[ -n "${SLURM_NTASKS:-}" ]] && (( tasks_per_node > 1 )); then
    # One process per GPU: SLURM may already show each task its own GPU only.
    if (( gpus == 1 )); then setenv JAX_LOCAL_DEVICE_IDS 0
    else setenv JAX_LOCAL_DEVICE_IDS "${SLURM_LOCALID:?}"; fi
    setenv SSLOCR_LOCAL_DEVICES 1
  else
    # One process drives every local GPU: pass them all (JAX's SLURM default is one).
    setenv JAX_LOCAL_DEVICE_IDS "$(seq -s, 0 $((gpus - 1)))"
    setenv SSLOCR_LOCAL_DEVICES "$gpus"
  fi
fi

cd "$REPO_ROOT"
case "${1:-}" in
  install)
    run "$PYTHON" -m pip install -U pip
    run "$PYTHON" -m pip install -e ".[gpu]"
    run "$PYTHON" -c 'import jax; print(jax.__version__, jax.devices())'
    ;;
  check)
    run "$PYTHON" -c '
import os
import jax
from sslocr_jax import main
if os.environ.get("JAX_COORDINATOR_ADDRESS") or int(os.environ.get("SLURM_NTASKS", "1")) > 1:
  main.initialize_distributed()
print(main.check_local_devices(int(os.environ["SSLOCR_LOCAL_DEVICES"])))'
    ;;
  train)
    shift
    # A local workdir is created here; a bucket URI (gs://...) needs no folder.
    [[ "$WORKDIR" == *://* ]] || run mkdir -p "$WORKDIR"
    # exec: the launcher's signals (SLURM's SIGTERM before a time limit) reach the trainer.
    cmd=("$PYTHON" -m sslocr_jax.main --config="$CONFIG" --workdir="$WORKDIR"
         "${distributed_args[@]}" "$@")
    echo "+ $(quote "${cmd[@]}")"
    [[ "$DRY_RUN" == 1 ]] || exec "${cmd[@]}"
    ;;
  *)
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "${BASH_SOURCE[0]}"
    exit 2
    ;;
esac

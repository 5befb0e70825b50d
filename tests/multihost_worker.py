r"""One process of a two-process CPU run of `sslocr_jax.main` (driven by tests/test_multihost.py).

    python tests/multihost_worker.py PORT PROCESS_ID NUM_PROCESSES WORKDIR OUT_NPZ CONFIG [ARGS...]

Runs CONFIG (e.g. configs/dig.py:smoke) through the real CLI (`--config.distributed=True`,
coordinator on 127.0.0.1:PORT, one CPU device per process, gloo collectives, mesh data=1 x
fsdp=2 so the params are sharded across the two processes); ARGS are more
`--config.FIELD=VALUE` overrides. Rerunning on the same WORKDIR resumes.

With MULTIHOST_WAIT_FOR_SIGNAL_AT=N in the environment the process, once it has fed N batches,
waits for a shutdown signal (which the test sends to the whole process group) before feeding
the next one, so the signal lands mid-run whatever the machine's speed.

Saves to OUT_NPZ: every process-local batch fed (`fed/{i}/{name}`, i from 1 in this run), and
the global and local shapes of one FSDP-sharded kernel.
"""

import os
import sys
import time

# One CPU device per process; cheap XLA optimisation (compile time dominates this test).
os.environ["XLA_FLAGS"] = (
  "--xla_force_host_platform_device_count=1 "
  "--xla_backend_optimization_level=0 "
  "--xla_llvm_disable_expensive_passes=true"
)
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from sslocr_jax import main as main_lib  # noqa: E402
from sslocr_jax.train import loop  # noqa: E402
from sslocr_jax.train import sharding  # noqa: E402


def main():
  port, process_id, num_processes, workdir, out = sys.argv[1:6]
  fed, captured, signals = [], {}, []
  wait_at = int(os.environ.get("MULTIHOST_WAIT_FOR_SIGNAL_AT", "0"))
  real_global_batch, real_setup = sharding.global_batch, loop.setup
  real_handler = loop._Preemption._handler  # pylint: disable=protected-access

  def recording_global_batch(local_batch, mesh):
    if wait_at and len(fed) == wait_at:
      deadline = time.time() + 120
      while not signals and time.time() < deadline:
        time.sleep(0.02)
    fed.append({k: np.asarray(v) for k, v in local_batch.items()})
    return real_global_batch(local_batch, mesh)

  def capturing_setup(*args, **kwargs):
    captured["setup"] = real_setup(*args, **kwargs)
    return captured["setup"]

  def noting_handler(self, signum, frame):
    signals.append(signum)
    real_handler(self, signum, frame)

  sharding.global_batch, loop.setup = recording_global_batch, capturing_setup
  loop._Preemption._handler = noting_handler  # pylint: disable=protected-access

  sys.argv = [
    "sslocr_jax.main",
    f"--config={sys.argv[6]}",
    f"--workdir={workdir}",
    "--config.distributed=True",
    f"--coordinator_address=127.0.0.1:{port}",
    f"--num_processes={num_processes}",
    f"--process_id={process_id}",
    "--config.mesh.data=1",
    "--config.mesh.fsdp=-1",
    *sys.argv[7:],
  ]
  try:
    main_lib._entry()  # pylint: disable=protected-access
  except SystemExit as e:
    if e.code:
      raise
  saved = {f"fed/{i + 1}/{k}": v for i, b in enumerate(fed) for k, v in b.items()}
  fc1 = lambda tree: tree["encoder"]["blocks_0"]["mlp"]["fc1"]["kernel"]  # FSDP-sharded
  shape = fc1(captured["setup"].state.params).shape
  saved["fc1_kernel_shape"] = np.asarray(shape)  # global / this process's shard
  saved["fc1_kernel_local_shape"] = np.asarray(
    fc1(captured["setup"].shardings.params).shard_shape(shape)
  )
  saved["signals"] = np.asarray(signals, np.int64)
  np.savez(out, **saved)
  print(f"worker {jax.process_index()} done", flush=True)


if __name__ == "__main__":
  main()

r"""One process of a two-process CPU run of `sslocr_jax.main` (driven by tests/test_multihost.py).

    python tests/multihost_worker.py PORT PROCESS_ID NUM_PROCESSES WORKDIR OUT_NPZ

1. Runs the DiG smoke config through the real CLI (`--config.distributed=True`, coordinator on
   127.0.0.1:PORT, one CPU device per process, gloo collectives, mesh data=1 x fsdp=2 so the
   params are sharded across the two processes) for 6 steps, checkpointing at 3 and 6.
2. Both processes then restore the step-3 checkpoint (train state and their own data iterator)
   and replay steps 4-6 with the same compiled step.
Saves to OUT_NPZ: every process-local batch fed in 1 (`fed/{step}/{name}`), the local batches
and losses of the replay (`replay/...`).
"""

import os
import sys

# One CPU device per process; cheap XLA optimisation (compile time dominates this test).
os.environ["XLA_FLAGS"] = ("--xla_force_host_platform_device_count=1 "
                           "--xla_backend_optimization_level=0 "
                           "--xla_llvm_disable_expensive_passes=true")
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from sslocr_jax import main as main_lib  # noqa: E402
from sslocr_jax.train import checkpoint as ckpt_lib  # noqa: E402
from sslocr_jax.train import loop  # noqa: E402
from sslocr_jax.train import sharding  # noqa: E402

TOTAL_STEPS, CKPT_EVERY = 6, 3


def main():
  port, process_id, num_processes, workdir, out = sys.argv[1:6]
  fed, captured = [], {}
  real_global_batch, real_setup = sharding.global_batch, loop.setup

  def recording_global_batch(local_batch, mesh):
    fed.append({k: np.asarray(v) for k, v in local_batch.items()})
    return real_global_batch(local_batch, mesh)

  def capturing_setup(*args, **kwargs):
    captured.update(real_setup(*args, **kwargs))
    return captured
  sharding.global_batch, loop.setup = recording_global_batch, capturing_setup

  sys.argv = [
      "sslocr_jax.main", "--config=configs/dig.py:smoke", f"--workdir={workdir}",
      "--config.distributed=True", f"--coordinator_address=127.0.0.1:{port}",
      f"--num_processes={num_processes}", f"--process_id={process_id}",
      f"--config.total_steps={TOTAL_STEPS}", "--config.schedule_steps=12",
      "--config.log_every=1", f"--config.checkpoint_every={CKPT_EVERY}",
      f"--config.viz_every={TOTAL_STEPS}", "--config.mesh.data=1", "--config.mesh.fsdp=-1"]
  try:
    main_lib._entry()  # pylint: disable=protected-access
  except SystemExit as e:
    if e.code:
      raise
  sharding.global_batch = real_global_batch

  # Both hosts restore step 3 (state shards + their own data iterator) and replay 4..6.
  s = captured
  data_iter = iter(s["dataset"])
  checkpointer = ckpt_lib.Checkpointer(os.path.join(workdir, "checkpoints"))
  abstract = jax.tree.map(lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh),
                          jax.eval_shape(lambda: s["state"]), s["shardings"])
  state, step = checkpointer.restore(abstract, data_iter, step=CKPT_EVERY)
  checkpointer.close()
  saved = {f"fed/{i + 1}/{k}": v for i, b in enumerate(fed) for k, v in b.items()}
  for i in range(step + 1, TOTAL_STEPS + 1):
    local = next(data_iter)
    state, metrics = s["train_step"](state, sharding.global_batch(local, s["mesh"]))
    saved.update({f"replay/{i}/{k}": v for k, v in local.items()})
    saved.update({f"replay/{i}/metric/{k}": np.asarray(v) for k, v in metrics.items()})
  sharded = state.params["encoder"]["blocks_0"]["mlp"]["fc1"]["kernel"]
  saved["fc1_kernel_local_shape"] = np.asarray(sharded.addressable_shards[0].data.shape)
  saved["fc1_kernel_shape"] = np.asarray(sharded.shape)
  np.savez(out, **saved)
  print(f"process {jax.process_index()} of {jax.process_count()}: {jax.local_device_count()} "
        f"local / {jax.device_count()} devices, done", flush=True)


if __name__ == "__main__":
  main()

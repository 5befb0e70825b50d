"""Orbax checkpoints of the train state together with the grain iterator state.

Layout: `WORKDIR/checkpoints/<step>/{state,data}`; `data` holds one JSON file per process
with that process's grain iterator state, so a restore resumes the data stream exactly.
Directories are `etils.epath` paths: local folders or bucket URIs (`gs://bucket/run/checkpoints`).
"""

from absl import logging
from etils import epath
import grain
import jax
import orbax.checkpoint as ocp

from sslocr_jax import errors
from sslocr_jax.train import writers


class Checkpointer:
  """Saves and restores (train state, data iterator) at a step."""

  def __init__(self, directory, max_to_keep: int = 3, async_save: bool = True):
    self.directory: epath.Path = writers.workdir_path(directory)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=True, enable_async_checkpointing=async_save)
    self.manager = ocp.CheckpointManager(
        self.directory, options=options,
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "data": grain.checkpoint.CheckpointHandler()})

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state, data_iterator=None, force: bool = True) -> None:
    items = {"state": ocp.args.StandardSave(state)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    self.manager.save(step, args=ocp.args.Composite(**items), force=force)

  def restore(self, abstract_state, data_iterator=None, step: int | None = None):
    """Restores into `abstract_state` (ShapeDtypeStructs with shardings); returns (state, step)."""
    step = self.latest_step() if step is None else step
    items = {"state": ocp.args.StandardRestore(abstract_state)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    logging.info("Restored checkpoint %s/%d", self.directory, step)
    return restored["state"], step

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def abstract_like(state, shardings):
  """ShapeDtypeStructs carrying the given shardings, the restore target for `state`."""
  return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                      state, shardings)


def restore_params(directory, step: int | None = None):
  """Loads only the params tree of a checkpoint (for fine-tuning, export, evaluation), on host."""
  directory = writers.workdir_path(directory)
  if (directory / "checkpoints").is_dir():
    directory = directory / "checkpoints"
  manager = ocp.CheckpointManager(directory, item_handlers={"state": ocp.StandardCheckpointHandler()})
  step = manager.latest_step() if step is None else step
  if step is None:
    raise errors.MissingPath(f"no checkpoint found under {directory}")
  # Target: every array on one local CPU device, whatever mesh / device count saved it.
  cpu = jax.sharding.SingleDeviceSharding(jax.local_devices(backend="cpu")[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=cpu),
                        manager.item_metadata(step)["state"])
  restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
  manager.close()
  return restored["state"]

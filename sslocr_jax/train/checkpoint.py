"""Orbax checkpoints of the train state together with the grain iterator state.

Layout: `WORKDIR/checkpoints/<step>/{state,data}`; `data` holds one JSON file per process
with that process's grain iterator state, so a restore resumes the data stream exactly.
Directories are `etils.epath` paths: local folders or bucket URIs (`gs://bucket/run/checkpoints`).

A damaged step folder (a file deleted or truncated, `_METADATA` missing) does not block a
run: restores try the steps from the newest down, warn about each one skipped and why, and
fail naming the folder only when none restores. A resumed run sets the damaged newer steps
aside as `<step>.damaged` (kept for inspection; orbax ignores them), so it can save those
steps again.
"""

import sys

from absl import logging
from etils import epath
import grain
import jax
import orbax.checkpoint as ocp

from sslocr_jax import errors
from sslocr_jax import paths


class Checkpointer:
  """Saves and restores (train state, data iterator) at a step."""

  def __init__(self, directory, max_to_keep: int = 3, async_save: bool = True):
    self.directory: epath.Path = paths.workdir_path(directory)
    options = ocp.CheckpointManagerOptions(
      max_to_keep=max_to_keep, create=True, enable_async_checkpointing=async_save
    )
    self.manager = ocp.CheckpointManager(
      self.directory,
      options=options,
      item_handlers={
        "state": ocp.StandardCheckpointHandler(),
        "data": grain.checkpoint.CheckpointHandler(),
      },
    )

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state, data_iterator=None, force: bool = True) -> None:
    items = {"state": ocp.args.StandardSave(state)}
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    self.manager.save(step, args=ocp.args.Composite(**items), force=force)

  def restore(self, abstract_state, data_iterator=None, step: int | None = None):
    """Restores into `abstract_state` (ShapeDtypeStructs with shardings); returns (state, step).

    Without `step`: the newest step that restores; newer damaged steps are warned about and set
    aside (`<step>.damaged`). Raises UserError naming the folder when none restores.
    """
    steps = [step] if step is not None else sorted(self.manager.all_steps(), reverse=True)
    skipped = []
    for s in steps:
      items = {"state": ocp.args.StandardRestore(abstract_state)}
      if data_iterator is not None:
        items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
      try:
        restored = self.manager.restore(s, args=ocp.args.Composite(**items))
      except Exception as e:  # pylint: disable=broad-except
        if _is_shape_mismatch(e):  # older steps have the same shapes: not damage
          raise
        _quiet_closed_loop_callbacks()
        skipped.append((s, damage_reason(e)))
        logging.warning(
          "checkpoint %s/%d does not restore (%s); trying the previous step",
          self.directory,
          s,
          skipped[-1][1],
        )
        continue
      if skipped and step is None:
        self._set_aside([k for k, _ in skipped])
      logging.info("Restored checkpoint %s/%d", self.directory, s)
      return restored["state"], s
    raise _none_restores(self.directory, skipped)

  def _set_aside(self, steps) -> None:
    """Renames damaged step folders to `<step>.damaged` (process 0) and reloads the manager."""
    self.manager.wait_until_finished()
    if jax.process_index() == 0:
      for s in steps:
        src = self.directory / str(s)
        dst = self.directory / f"{s}.damaged"
        k = 1
        while dst.exists():
          k += 1
          dst = self.directory / f"{s}.damaged{k}"
        src.rename(dst)
        logging.warning("set the damaged checkpoint %s aside as %s", src, dst.name)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

      multihost_utils.sync_global_devices("checkpoint_set_aside")
    self.manager.reload()

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves and closes; a second call does nothing."""
    if getattr(self, "_closed", False):
      return
    self._closed = True
    self.manager.wait_until_finished()
    self.manager.close()


def abstract_like(state, shardings):
  """ShapeDtypeStructs carrying the given shardings, the restore target for `state`."""
  return jax.tree.map(
    lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings
  )


def _quiet_closed_loop_callbacks() -> None:
  """After a failed restore, tensorstore still completes the other reads and calls back into
  orbax's closed asyncio loop; each callback prints a 'RuntimeError: Event loop is closed'
  traceback through sys.excepthook (dozens of them, burying the warning). Swallow exactly
  those; every other exception is printed as before."""
  previous = sys.excepthook
  if getattr(previous, "_sslocr_quiet", False):
    return

  def hook(kind, value, tb):
    if kind is RuntimeError and str(value) == "Event loop is closed":
      return
    previous(kind, value, tb)

  hook._sslocr_quiet = True  # pylint: disable=protected-access
  sys.excepthook = hook


def _is_shape_mismatch(e: Exception) -> bool:
  text = str(e).lower()
  return "shape" in text and ("mismatch" in text or "does not match" in text)


def damage_reason(e: Exception) -> str:
  """A short why for a step that does not restore: the type and first line of the innermost
  cause (where tensorstore names the file: "Error reading ... local file ...")."""
  chain = [e]
  while len(chain) < 8 and (chain[-1].__cause__ or chain[-1].__context__) is not None:
    chain.append(chain[-1].__cause__ or chain[-1].__context__)
  inner = chain[-1]
  first = (str(inner).strip().splitlines() or [""])[0].split(" [tensorstore_spec=")[0]
  return f"{type(inner).__name__}: {first[:300]}"


def _none_restores(directory, skipped) -> errors.UserError:
  if not skipped:
    return errors.MissingPath(f"no checkpoint found under {directory}")
  steps = "; ".join(f"step {s}: {why}" for s, why in skipped)
  return errors.UserError(f"no checkpoint in {directory} restores ({steps})")


def checkpoint_steps(directory) -> list[int]:
  """The step folders (`<step>/`; orbax writes them under a temporary name first) under
  `directory`, newest first."""
  directory = epath.Path(directory)
  if not directory.is_dir():
    return []
  return sorted(
    (int(p.name) for p in directory.iterdir() if p.name.isdigit() and p.is_dir()), reverse=True
  )


def restore_params(directory, step: int | None = None):
  """Loads the state tree of a checkpoint on the host (for fine-tuning, export, evaluation).

  Reads only the `state` item with its own handler (a CheckpointManager would warn that the
  data iterator item has no handler). Without `step`: the newest step that restores, with a
  warning naming each damaged newer step and why; UserError naming the folder when none does.
  """
  directory = paths.workdir_path(directory)
  if (directory / "checkpoints").is_dir():
    directory = directory / "checkpoints"
  steps = [step] if step is not None else checkpoint_steps(directory)
  # Target: every array on one local CPU device, whatever mesh / device count saved it.
  cpu = jax.sharding.SingleDeviceSharding(jax.local_devices(backend="cpu")[0])
  skipped = []
  for s in steps:
    path = directory / str(s) / "state"
    handler = ocp.StandardCheckpointHandler()
    try:
      target = jax.tree.map(
        lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=cpu), handler.metadata(path).tree
      )
      return handler.restore(path, args=ocp.args.StandardRestore(target))
    except Exception as e:  # pylint: disable=broad-except
      _quiet_closed_loop_callbacks()
      skipped.append((s, damage_reason(e)))
      logging.warning(
        "checkpoint %s/%d does not restore (%s); trying the previous step",
        directory,
        s,
        skipped[-1][1],
      )
    finally:
      handler.close()
  raise _none_restores(directory, skipped)

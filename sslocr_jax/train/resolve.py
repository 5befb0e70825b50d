"""Resolves anything a user calls a checkpoint into (config, params, model_state, origin, step).

    ckpt = resolve(path, config=None, use_best=True, include="all")

`path` may be
  - a training workdir (its config.json; weights from `best/` when `use_best` and it holds a
    step, else the latest step of `checkpoints/`), its `checkpoints/` or `best/` folder, or one
    step folder (`.../checkpoints/500`): the config.json is found in or above it;
  - a PyTorch state dict: an exported `.safetensors` / `.pth` with the model JSON export
    writes next to it (`FILE.json`; export/cli.py), a folder holding one such pair, or an
    official DiG `.pth` (`config` names the model: e.g. configs/evaluate.py:dig_official).
Local paths or bucket URIs (`gs://...`, sslocr_jax/paths.py). A `config` given by the caller
is the model a state dict is read as (over its model JSON); a JAX checkpoint is described by
its run's config.json, and by `config` only when it has none. Used by the train
loop (`init_from`), predict.py, evaluate/benchmarks.py and export/cli.py.
"""

import dataclasses
import json

from etils import epath
import jax
import ml_collections
import numpy as np

from sslocr_jax import config_utils
from sslocr_jax import errors
from sslocr_jax import paths
from sslocr_jax.models import torch_mapping
from sslocr_jax.train import checkpoint as ckpt_lib
from sslocr_jax.train import torch_state

TORCH_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


@dataclasses.dataclass
class Checkpoint:
  """A resolved checkpoint: numpy trees on the host."""

  config: ml_collections.ConfigDict | None  # None: a state dict without model JSON or config
  params: dict
  model_state: dict
  origin: str  # "method=dig, model (name=vit, ...) [path]", or the path alone
  step: int | None = None
  path: str = ""


def is_torch_file(path) -> bool:
  return str(path).endswith(TORCH_SUFFIXES)


def load_run_config(workdir) -> ml_collections.ConfigDict:
  """The config.json a training run wrote in (or above) `workdir` (local or gs://...)."""
  d = paths.workdir_path(workdir)
  for _ in range(3):
    path = d / "config.json"
    if path.is_file():
      return ml_collections.ConfigDict(json.loads(path.read_text()))
    if len(d.parts) <= (3 if paths.is_remote(d) else 1):  # at the bucket / file system root
      break
    d = d.parent
  raise errors.MissingPath(f"no config.json in or above {workdir!r}: is it a training workdir?")


def checkpoint_dir(workdir, use_best: bool = True) -> epath.Path:
  """WORKDIR/best if it holds a checkpoint (and use_best), else WORKDIR/checkpoints, else WORKDIR."""
  workdir = paths.workdir_path(workdir)
  has_steps = lambda d: d.is_dir() and any(p.name.isdigit() for p in d.iterdir())
  best = workdir / "best"
  if use_best and has_steps(best):
    return best
  ckpts = workdir / "checkpoints"
  return ckpts if ckpts.is_dir() else workdir


def describe(config, path) -> str:
  """'method=dig, model (name=vit, size=small, ...) [path]' of a run config."""
  desc = config_utils.describe_model(config.get("model", None))
  return f"method={config.get('method', '?')}, model ({desc}) [{path}]"


def config_from_model_json(info: dict) -> ml_collections.ConfigDict:
  """The run config an exported model JSON (export/cli.py `model_json`) records under "config";
  for an older JSON without it, the fields it records (enough for a recognizer)."""
  if "config" in info:
    return ml_collections.ConfigDict(info["config"])
  c = {
    "method": info["method"],
    "model": info["model"],
    "image_height": int(info["image_size"][0]),
    "image_width": int(info["image_size"][1]),
  }
  c.update(info.get("heads", {}))
  if "decoder" in info:
    c.update(decoder=info["decoder"], charset=info["charset"], max_len=int(info["max_len"]))
    c[info["decoder"]] = info.get("decoder_config", {}) or {}
  return ml_collections.ConfigDict(c)


def _torch_pair(path: epath.Path) -> epath.Path:
  """The state-dict file of `path`: itself, or the one state dict (with a JSON) in a folder."""
  if not path.is_dir():
    return path
  found = sorted(p for p in path.iterdir() if is_torch_file(p) and p.with_suffix(".json").is_file())
  if len(found) != 1:
    raise errors.MissingPath(
      f"{path}: no training workdir (config.json) and not one exported "
      f"state dict with its .json ({[p.name for p in found]})"
    )
  return found[0]


def _resolve_torch(path: epath.Path, config, include: str) -> Checkpoint:
  path = _torch_pair(path)
  meta = path.with_suffix(".json")
  info = json.loads(meta.read_text()) if meta.is_file() else {}
  if config is None and info:
    config = config_from_model_json(info)
  include = include or info.get("include", "all")
  if config is None:
    raise errors.UserError(
      f"{path}: a PyTorch state dict does not say which model it holds: evaluate it "
      "with `python -m sslocr_jax.main --config=configs/evaluate.py:dig_official "
      f"--config.checkpoint={path}` (an official DiG fine-tuned file), read images with "
      f"`python -m sslocr_jax.predict --checkpoint={path} "
      "--model_config=configs/evaluate.py:dig_official`, or in Python "
      "Recognizer.from_checkpoint(path, config=...)"
    )
  flat = torch_mapping.load_torch_state(str(path))
  if include == "auto":  # the whole model when the file holds more than an encoder
    specs, _ = torch_state.network_specs(config, "all")
    others = tuple(p for p, _, _ in specs[1:] if p != "encoder.norm.")
    include = "all" if others and any(k.startswith(others) for k in flat) else "encoder"
  state = torch_state.import_state(flat, config, include)
  return Checkpoint(
    config, state["params"], state["model_state"], describe(config, path), None, str(path)
  )


def resolve(path, config=None, *, use_best: bool = True, include: str | None = None) -> Checkpoint:
  """The checkpoint at `path` (see the module docstring).

  `include` ("all" | "encoder" | "auto": the whole model if the file holds more than the
  encoder; default: the `include` its model JSON records, else "all") applies to PyTorch
  state dicts; a JAX checkpoint is always read whole.
  """
  p = paths.workdir_path(path)
  if not p.exists():
    raise errors.MissingPath(f"checkpoint {str(path)!r} does not exist")
  if is_torch_file(p) or (p.is_dir() and not _has_run_config(p) and not _is_jax_checkpoint(p)):
    return _resolve_torch(p, config, include)
  try:
    config = load_run_config(p)
  except FileNotFoundError:
    if config is None:
      raise
  if p.name.isdigit() and not (p / "checkpoints").is_dir():  # one step folder
    directory, step = p.parent, int(p.name)
  else:  # the newest step that restores (restore_params steps past damaged ones)
    directory, step = checkpoint_dir(p, use_best), None
  state = ckpt_lib.restore_params(directory, step=step)
  if step is None and "step" in state:
    step = int(state["step"])
  elif step is None:  # a bare {params, model_state} tree: its folder's step
    step = next(iter(ckpt_lib.checkpoint_steps(_steps_folder(directory))), None)
  state = jax.tree.map(
    np.asarray,
    {"params": state.get("params", {}), "model_state": state.get("model_state", {}) or {}},
  )
  return Checkpoint(
    config,
    state["params"],
    state["model_state"],
    describe(config, directory),
    None if step is None else int(step),
    str(directory),
  )


def load_pretrained(method, state, config):
  """The train state with the weights of `config.init_from` (anything `resolve` reads) that the
  method's `load_pretrained(state, config, source)` hook copies; a JAX checkpoint is read from
  its latest step (not best/), a state dict with `include=method.INIT_FROM`."""
  try:
    source = resolve(
      config.init_from, config, use_best=False, include=getattr(method, "INIT_FROM", "encoder")
    )
  except FileNotFoundError as e:
    raise errors.MissingPath(f"config.init_from={config.init_from!r}: {e}") from e
  return method.load_pretrained(state, config, source)


def _steps_folder(directory: epath.Path) -> epath.Path:
  return directory / "checkpoints" if (directory / "checkpoints").is_dir() else directory


def _has_run_config(p: epath.Path) -> bool:
  try:
    load_run_config(p)
    return True
  except FileNotFoundError:
    return False


def _is_jax_checkpoint(p: epath.Path) -> bool:
  """An orbax step folder or a folder of steps (checkpoints/, best/)."""
  return (
    (p / "state").is_dir()
    or any(q.name.isdigit() for q in p.iterdir())
    or (p / "checkpoints").is_dir()
  )

"""Helpers shared by `configs/*.py`: the variant-argument parser and common config blocks.

A config file is one function `get_config(arg=None)`; `arg` is the text after `:` in
`--config=configs/dig.py:cpu,size=tiny`: comma-separated flags and key=value pairs (big_vision
style), parsed against defaults so a typo is an error, not a silent default.
"""

import ml_collections

from sslocr_jax import errors

def parse_arg(arg: str | None, **defaults) -> ml_collections.ConfigDict:
  """Parses `"smoke,size=tiny"` against defaults; bare words are boolean flags set to True."""
  out = ml_collections.ConfigDict(defaults)
  for part in (arg or "").split(","):
    part = part.strip()
    if not part:
      continue
    key, eq, value = part.partition("=")
    if key not in defaults:
      raise errors.UserError(f"config variant word {key!r} is unknown; valid: {sorted(defaults)}")
    default = defaults[key]
    if not eq:
      value = True
    elif isinstance(default, bool):
      value = value.lower() in ("1", "true", "yes")
    elif isinstance(default, int):
      value = int(value)
    elif isinstance(default, float):
      value = float(value)
    out[key] = value
  return out


def mesh_block(data: int = -1, fsdp: int = 1) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict({"data": data, "fsdp": fsdp})


def sharding_block() -> ml_collections.ConfigDict:
  """Logical axis name -> mesh axes (maxtext style). Edit to change the parallelism."""
  return ml_collections.ConfigDict({"fsdp_min_size": 2**16, "logical_rules": [
      ["batch", ["data", "fsdp"]],
      ["embed", "fsdp"],
      ["mlp", None],
      ["heads", None],
      ["vocab", None],
      ["conv_in", None],
      ["conv_out", "fsdp"],
  ]})


def synthetic_data(num_samples: int, seed: int = 0, num_workers: int = 0,
                   font_split: str = "train", word_prob: float = 0.6
                   ) -> ml_collections.ConfigDict:
  """The built-in synthetic text lines (default source); `source` switches to lmdb/tfds.

  `word_prob`: share of dictionary words among the lines (the rest are numbers, codes and
  random strings; data/render.py).
  """
  return ml_collections.ConfigDict({
      "source": "synthetic",
      "num_samples": num_samples,
      "seed": seed,
      "font_split": font_split,
      "word_prob": word_prob,
      "font_dirs": [],
      "lmdb_paths": [],
      "tfds_name": "",
      "tfds_data_dir": "",
      "split": "train",
      "num_workers": num_workers,
      "num_threads": 4,
      "prefetch": 64,
  })


def add_run_fields(c: ml_collections.ConfigDict, checkpoint_every: int = 1000,
                   viz_every: int | None = 1000) -> None:
  """The run fields every config has: mesh, sharding, accumulation, logging, checkpoints."""
  c.mesh = mesh_block()
  c.grad_accum_steps = 1  # micro-batches per step (train/step.py)
  c.sharding = sharding_block()
  c.log_every = 50
  c.checkpoint_every = checkpoint_every
  c.keep_checkpoints = 3
  c.async_checkpoints = True
  if viz_every is not None:
    c.viz_every = viz_every


def schedule_steps(config) -> int:
  """Length of the lr / momentum schedules: `config.schedule_steps`, else `config.total_steps`.

  Set it to stop a run early (a time-boxed job, a test of resume) without changing the
  schedules: `total_steps=N, schedule_steps=2N`, then `total_steps=2N` resumes to the same run.
  """
  return int(config.get("schedule_steps", 0) or config.total_steps)

"""Helpers shared by `configs/*.py`: the variant-argument parser and common config blocks.

A config file is one function `get_config(arg=None)`; `arg` is the text after `:` in
`--config=configs/dig.py:cpu,size=tiny`: comma-separated flags and key=value pairs (big_vision
style), parsed against defaults so a typo is an error, not a silent default.
"""

import importlib.util
import os

import ml_collections

from sslocr_jax import errors

# The checkout holding sslocr_jax/ (and configs/): relative config paths fall back to it.
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(spec: str) -> ml_collections.ConfigDict:
  """`"configs/dig.py:smoke,size=tiny"` -> the ConfigDict of that file's `get_config(arg)`, as
  `--config=` gives it. A relative path is taken from the current folder, else from the
  repository root. The one config-file loader (main, configs/evaluate.py, tests, benchmarks,
  the study)."""
  path, _, arg = spec.partition(":")
  if not os.path.isabs(path) and not os.path.exists(path):
    path = os.path.join(REPO_ROOT, path)
  name = "config_" + os.path.splitext(os.path.basename(path))[0]
  module_spec = importlib.util.spec_from_file_location(name, path)
  if module_spec is None:
    raise errors.MissingPath(f"config file {path!r} does not exist (--config=FILE[:VARIANT])")
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg or None)


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
  return ml_collections.ConfigDict(
    {
      "fsdp_min_size": 2**16,
      "logical_rules": [
        ["batch", ["data", "fsdp"]],
        ["embed", "fsdp"],
        ["mlp", None],
        ["heads", None],
        ["vocab", None],
        ["conv_in", None],
        ["conv_out", "fsdp"],
      ],
    }
  )


def synthetic_data(
  num_samples: int,
  seed: int = 0,
  num_workers: int = 0,
  font_split: str = "train",
  word_prob: float = 0.6,
) -> ml_collections.ConfigDict:
  """The built-in synthetic text lines (default source); `source` switches to lmdb/tfds.

  `word_prob`: share of dictionary words among the lines (the rest are numbers, codes and
  random strings; data/render.py). `num_workers`: grain worker processes per host; -1 sizes
  them from the host's cores (data/pipeline.py `resolve_num_workers`), 0 = none.
  """
  return ml_collections.ConfigDict(
    {
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
    }
  )


def add_probe_fields(c: ml_collections.ConfigDict, probe_every: int = 0, **sizes) -> None:
  """The representation probe of a pretraining config (train/probe.py; docs/probe.md): at step 0
  of a fresh run, every `probe_every` steps and at the last step, a linear CTC head trained on
  the frozen encoder's frames of labeled lines in held-out fonts, logged as `probe_accuracy` /
  `probe_one_minus_ned` (`probe_every` 0 = off). `config.probe` (`sizes` override its numbers):

  train_samples / eval_samples   lines it trains on / is scored on: the first usable lines of
                                 `data` (labels in `charset`, at most `max_len` characters),
                                 rendered once per run; disjoint, held-out fonts
  steps, batch_size, lr          the head's Adam training (from the same seed at every probe)
  charset                        a named charset (data/charset.py; lower36: caseless)
  max_len                        longest label; 0 = half the encoder's frames (CTC needs
                                 room for repeats), at most 25
  image_width                    width of the probe's lines; 0 = config.image_width (another
                                 width only for a convolutional encoder)
  encode_batch_size              lines per encoder call when the features are computed
  seed                           the head's init and batch order (its own rng)
  data                           the source: synthetic lines in held-out font families (or
                                 any data block, e.g. an LMDB of labeled lines)
  """
  c.probe_every = probe_every
  c.probe = ml_collections.ConfigDict(
    {
      "train_samples": 1024,
      "eval_samples": 512,
      "steps": 300,
      "batch_size": 64,
      "lr": 3e-2,
      "charset": "lower36",
      "max_len": 0,
      "image_width": 0,
      "encode_batch_size": 128,
      "seed": 0,
      # A seed of its own: not finetune.py's validation lines (1_000_003), the study's test
      # lines (configs/study.py, 2_000_003) nor benchmarks/vs_tesseract.py's (3_000_017, which
      # this was until 2026-12-05: same seed and fonts drew the same word lines).
      "data": synthetic_data(
        num_samples=100_000, seed=4_000_037, font_split="heldout", word_prob=0.9
      ),
    }
  )
  c.probe.update(sizes)


def header(
  task: str, method: str, *, batch_size: int, epochs: int = 10, num_samples: int = 2_000_000
) -> ml_collections.ConfigDict:
  """The fields every training config starts with: task, method, seed, distributed, dtype,
  the built-in synthetic lines as data (`num_samples` virtual samples), batch_size, and
  total_steps for `epochs` passes over them (schedule_steps 0: the schedules follow it)."""
  c = ml_collections.ConfigDict()
  c.task = task
  c.method = method
  c.seed = 0
  c.distributed = False  # jax.distributed.initialize() first (multi-host GPU/TPU launchers)
  c.dtype = "auto"  # compute: auto (bfloat16 on GPU/TPU, float32 on CPU) | float32 | bfloat16
  c.data = synthetic_data(num_samples=num_samples, num_workers=-1)
  c.batch_size = batch_size
  c.total_steps = epochs * num_samples // batch_size
  c.schedule_steps = 0  # lr/momentum schedule length; 0 = total_steps (see schedule_steps)
  return c


# ViT sizes of the `cpu` and `smoke` variants, the same in every config (an encoder pretrained
# with `dig.py:smoke` fine-tunes with `finetune.py:smoke`).
SMALL_VIT_SIZES = {
  "cpu": dict(embed_dim=128, depth=4, num_heads=4),
  "smoke": dict(embed_dim=32, depth=2, num_heads=2),
}


def vit_size(sizes: dict, size: str) -> dict:
  """{size, embed_dim, depth, num_heads} of a ViT `size` from the model's own table (configs
  pass `models/vit.SIZES`: this module sits below the models) or SMALL_VIT_SIZES."""
  table = {**sizes, **SMALL_VIT_SIZES}
  if size not in table:
    raise ValueError(f"size={size!r} is unknown; valid: {sorted(table)}")
  return dict(size=size, **table[size])


def resnet_model(size: dict, tps: bool) -> dict:
  """The `model` fields of the CNN + BiLSTM encoder from the model's own size (configs pass
  `models/resnet.SIZE`: this module sits below the models)."""
  return dict(name="resnet", **size, tps=tps, remat="none")


def add_run_fields(
  c: ml_collections.ConfigDict, checkpoint_every: int = 1000, viz_every: int | None = 1000
) -> None:
  """The run fields every config has: mesh, sharding, accumulation, logging, checkpoints."""
  c.mesh = mesh_block()
  c.grad_accum_steps = 1  # micro-batches per step (train/step.py)
  c.sharding = sharding_block()
  c.log_every = 50
  c.checkpoint_every = checkpoint_every
  c.keep_checkpoints = 3
  c.async_checkpoints = True
  c.stop_check_seconds = 5.0  # multi-host: agree on a SIGTERM at least this often (train/loop.py)
  if viz_every is not None:
    c.viz_every = viz_every


def schedule_steps(config) -> int:
  """Length of the lr / momentum schedules: `config.schedule_steps`, else `config.total_steps`.

  Set it to stop a run early (a time-boxed job, a test of resume) without changing the
  schedules: `total_steps=N, schedule_steps=2N`, then `total_steps=2N` resumes to the same run.
  """
  return int(config.get("schedule_steps", 0) or config.total_steps)


# Fields that make an encoder's parameters (models/vit.py, models/resnet.py).
ENCODER_KEYS = {
  "vit": ("embed_dim", "depth", "num_heads", "mlp_ratio", "patch_size"),
  "resnet": (
    "channels",
    "blocks",
    "lstm_hidden",
    "lstm_layers",
    "tps",
    "num_fiducials",
    "tps_channels",
  ),
}


def describe_model(model) -> str:
  """'name=vit, size=small, embed_dim=384, ...': the fields of a `config.model` block that
  make its encoder's parameters (for messages about mismatched checkpoints)."""
  model = model or {}
  keys = ("name", "size") + ENCODER_KEYS.get(model.get("name", "vit"), ())
  return ", ".join(f"{k}={model[k]}" for k in keys if k in model)

"""Encoder registry: one place that turns `config.model` into an encoder module.

Every encoder maps images `[B, H, W, 3]` in [-1, 1] to features `[B, N, D]` laid out row-major
on a `grid_h x grid_w` grid (N = grid_h * grid_w):
  vit     8 x 32 tokens for a 32x128 line (patch 4);
  resnet  1 x T frames (CNN with height collapsed, + BiLSTM), see models/resnet.py.
Decoders and pretext heads use `grid_h` to get a left-to-right sequence (`to_frames`).
"""

import importlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

ACCELERATOR_PLATFORMS = ("gpu", "cuda", "rocm", "tpu")


def compute_dtype(config) -> jnp.dtype:
  """The compute dtype of `config.dtype`: float32 | bfloat16 | auto (the default).

  `auto` is bfloat16 on GPU/TPU (their matrix units' fast path) and float32 on a CPU (where
  bfloat16 is emulated, slower, and would change the tests' figures). Params, optimizer state
  and the losses' reductions stay float32 either way (the models cast; the losses upcast).
  """
  name = str(config.get("dtype", "float32"))
  if name == "auto":
    return jnp.dtype(
      jnp.bfloat16 if jax.devices()[0].platform in ACCELERATOR_PLATFORMS else jnp.float32
    )
  return jnp.dtype(name)


REMAT_POLICIES = {
  # Keep every activation for the backward pass (fastest, most memory).
  "none": None,
  # Keep only each block's input; recompute the block in the backward pass (least memory,
  # about one more forward: ~1.33x the step's FLOPs).
  "full": jax.checkpoint_policies.nothing_saveable,
  # Keep the matmul outputs (dense layers, attention scores) and recompute the cheap
  # elementwise rest (norms, GELU, softmax, residuals). A ResNet block has no matmul (its
  # convolutions are not dots), so there it behaves as "full".
  "save_dots": jax.checkpoint_policies.dots_saveable,
}


def remat_name(remat) -> str:
  """`config.model.remat` as a policy name; the booleans of older configs mean none / full."""
  name = ("full" if remat else "none") if isinstance(remat, bool) else str(remat)
  if name not in REMAT_POLICIES:
    raise ValueError(f"config.model.remat={remat!r} is unknown; valid: {', '.join(REMAT_POLICIES)}")
  return name


def remat_block(block_cls, remat: str, static_argnums=(2,)):
  """`block_cls` rematerialised with the policy `remat` (a `REMAT_POLICIES` name).

  Used per encoder block (ViT block, ResNet basic block): the activation memory of the
  backward pass drops from all blocks' internals to their inputs (plus what the policy keeps).
  `static_argnums` counts `self` (2 = the `train` flag of `__call__(self, x, train)`).
  """
  name = remat_name(remat)
  if name == "none":
    return block_cls
  return nn.remat(block_cls, static_argnums=static_argnums, policy=REMAT_POLICIES[name])


def build(config):
  """Returns (encoder module, grid_h) for `config.model` (name, sizes) and `config.dtype`."""
  m = config.model
  dtype = compute_dtype(config)
  if m.name == "vit":
    vit = importlib.import_module("sslocr_jax.models.vit")
    encoder = vit.Encoder(
      embed_dim=m.embed_dim,
      depth=m.depth,
      num_heads=m.num_heads,
      mlp_ratio=m.get("mlp_ratio", 4.0),
      patch_size=m.get("patch_size", 4),
      image_size=(config.image_height, config.image_width),
      drop_path_rate=m.get("drop_path_rate", 0.0),
      dropout_rate=m.get("dropout_rate", 0.0),
      attn_dropout_rate=m.get("attn_dropout_rate", 0.0),
      pos_dropout=m.get("pos_dropout", False),
      dtype=dtype,
      remat=remat_name(m.get("remat", "none")),
      attention=m.get("attention", "auto"),
    )
    return encoder, config.image_height // m.get("patch_size", 4)
  if m.name == "resnet":
    resnet = importlib.import_module("sslocr_jax.models.resnet")
    return resnet.from_config(config), 1
  raise ValueError(f"config.model.name={m.name!r} is unknown; valid: vit, resnet")


def to_frames(features, grid_h: int):
  """[B, grid_h * W, D] -> [B, W, D]: average over the height of the grid (CTC time steps)."""
  b, n, d = features.shape
  return features.reshape(b, grid_h, n // grid_h, d).mean(axis=1)


def adaptive_pool_matrix(length: int, num_windows: int) -> np.ndarray:
  """`[num_windows, length]` averaging weights of PyTorch `adaptive_avg_pool1d`: window i
  averages frames floor(i*T/w) .. ceil((i+1)*T/w) - 1 (windows overlap when w does not
  divide T)."""
  m = np.zeros((num_windows, length), np.float32)
  for i in range(num_windows):
    start, end = (i * length) // num_windows, -((-(i + 1) * length) // num_windows)
    m[i, start:end] = 1.0 / (end - start)
  return m

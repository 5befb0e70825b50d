"""Encoder registry: one place that turns `config.model` into an encoder module.

Every encoder maps images `[B, H, W, 3]` in [-1, 1] to features `[B, N, D]` laid out row-major
on a `grid_h x grid_w` grid (N = grid_h * grid_w):
  vit     8 x 32 tokens for a 32x128 line (patch 4);
  resnet  1 x T frames (CNN with height collapsed, + BiLSTM), see models/resnet.py.
Decoders and pretext heads use `grid_h` to get a left-to-right sequence (`to_frames`).
"""

import importlib

import jax.numpy as jnp
import numpy as np


def build(config):
  """Returns (encoder module, grid_h) for `config.model` (name, sizes) and `config.dtype`."""
  m = config.model
  dtype = jnp.dtype(config.get("dtype", "float32"))
  if m.name == "vit":
    vit = importlib.import_module("sslocr_jax.models.vit")
    encoder = vit.Encoder(embed_dim=m.embed_dim, depth=m.depth, num_heads=m.num_heads,
                          mlp_ratio=m.get("mlp_ratio", 4.0), patch_size=m.get("patch_size", 4),
                          image_size=(config.image_height, config.image_width),
                          drop_path_rate=m.get("drop_path_rate", 0.0),
                          dropout_rate=m.get("dropout_rate", 0.0),
                          attn_dropout_rate=m.get("attn_dropout_rate", 0.0),
                          pos_dropout=m.get("pos_dropout", False),
                          dtype=dtype, remat=m.get("remat", False))
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

"""Helpers shared by the method modules: input normalisation, applying a network with optional
BatchNorm statistics, the frozen features of the representation probe (`probe_features`) and
the image grids of `visualize`."""

import jax
import jax.numpy as jnp

from sslocr_jax.models import encoders


def normalize(images):
  """uint8 [B, H, W, 3] -> float32 in [-1, 1] (mean 0.5, std 0.5; docs/interfaces.md)."""
  return images.astype(jnp.float32) / 127.5 - 1.0


def apply(net, params, stats, x, *, train: bool, rngs=None, **kwargs):
  """Applies a flax network with or without BatchNorm -> (out, new stats).

  `stats` is the network's `batch_stats` tree, or None for a network without BatchNorm (then
  None is returned). In training mode the statistics are updated (`mutable`); otherwise they
  are returned unchanged.
  """
  variables = {"params": params}
  if stats is not None:
    variables["batch_stats"] = stats
  rngs = rngs or {}
  if stats is None or not train:
    return net.apply(variables, x, train=train, rngs=rngs, **kwargs), stats
  out, updates = net.apply(variables, x, train=True, rngs=rngs, mutable=["batch_stats"], **kwargs)
  return out, updates.get("batch_stats", {})


def probe_frames(encoder, grid_h: int, params, stats, images):
  """A pretraining method's `probe_features`: images uint8 [B, H, W, 3] -> float32 [B, T, D].

  The encoder runs in inference mode (no mask, no dropout, BatchNorm running statistics
  `stats`, None without BatchNorm) and its grid is averaged over the height (`to_frames`: the
  sequence a CTC head reads). Gradients are stopped: the probe trains its head only.
  """
  features, _ = apply(encoder, params, stats, normalize(images), train=False)
  frames = encoders.to_frames(features.astype(jnp.float32), grid_h)
  return jax.lax.stop_gradient(frames)


def encoder_probe_features(params, model_state, images, config):
  """`probe_features` of any `config.model` encoder stored as `params["encoder"]` (its
  BatchNorm statistics, if any, as `model_state["batch_stats"]["encoder"]`): images uint8
  [B, H, W, 3] -> [B, T, D]. SimAN's, and benchmarks/probe_checkpoints.py's for any workdir."""
  stats = (model_state or {}).get("batch_stats", {}).get("encoder") or None
  encoder, grid_h = encoders.build(config)
  return probe_frames(encoder, grid_h, params["encoder"], stats, images)


def image_grid(panels, gap: int = 2):
  """List of [N, H, W, 3] float images in [0, 1] -> one uint8 grid: N rows x len(panels) columns."""
  pad = lambda x: jnp.pad(x, ((0, 0), (0, gap), (0, gap), (0, 0)), constant_values=1.0)
  row = jnp.concatenate([pad(p) for p in panels], axis=2)  # [N, H+gap, cols*(W+gap), 3]
  grid = row.reshape(-1, row.shape[2], 3)
  return (jnp.clip(grid, 0, 1) * 255).round().astype(jnp.uint8)

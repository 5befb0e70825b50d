"""SeqCLR: sequence-to-sequence contrastive pretraining (Aberdam et al., CVPR 2021).

Spec: docs/seqclr.md. Instances are sub-sequences of the encoder's frame sequence, so
the representation stays sequential (what a CTC/attention decoder reads).

Views (host): image1, image2 = two independent `augment.seqclr_view`s of the same line
(no flips, no large rotations: the reading order is kept).

    frames  = encoder([image1; image2])          [2B, T, D]  CNN (+BiLSTM), T = 33 for 32x128
    frames  = projection(frames)                 [2B, T, P]  none | bilstm | mlp (per frame)
    inst    = instance_mapping(frames)           [2B, W, P]  all (W=1) | frame (W=T) | window (W=w)
    z1, z2  = the two views' instances           [B*W, P] each, row b*W + i = window i of image b
    loss    = NT-Xent(z1, z2; temperature)       over all 2*B*W instances of the global batch:
              the positive of z1[k] is z2[k] (same image, same position) and vice versa;
              every other instance, other windows of the same image included, is a negative.

Both views go through the encoder and projection in one call, so BatchNorm statistics are
over both views of the global batch (the same habit as DiG's release).

`seqclr_encoder_stage="cnn"` pretrains the CNN alone (the encoder is built with
`lstm_layers=0`; the BiLSTM, if any, is then part of the decoder at fine-tuning);
`"lstm"` pretrains CNN + BiLSTM as `config.model` describes it.

Networks (params): encoder [, projection]. model_state: {"batch_stats": {encoder [, projection]}}.
"""

import jax
import jax.numpy as jnp
import numpy as np

from sslocr_jax.data import augment
from sslocr_jax.methods import common
from sslocr_jax.models import encoders
from sslocr_jax.models import heads
from sslocr_jax.models import resnet

MAPPINGS = ("all", "frame", "window")
PROJECTIONS = ("none", "bilstm", "mlp")
STAGES = ("cnn", "lstm")


# ----------------------------------------------------------------------------- views (host)
def make_views(record, rng: np.random.Generator, config) -> dict:
  """record {"image": uint8 [H, W, 3]} -> {image1, image2: uint8 [32, 128, 3]}."""
  h, w = config.image_height, config.image_width
  image = record["image"]
  return {
    "image1": augment.seqclr_view(image, rng, h, w),
    "image2": augment.seqclr_view(image, rng, h, w),
  }


# ----------------------------------------------------------------------------- networks
def _check(config):
  for field, valid in (
    ("instance_mapping", MAPPINGS),
    ("projection", PROJECTIONS),
    ("seqclr_encoder_stage", STAGES),
  ):
    if config[field] not in valid:
      raise ValueError(f"config.{field}={config[field]!r} is unknown; valid: {', '.join(valid)}")


def encoder_from_config(config):
  """The encoder of `config.model` (models/encoders.py), without its BiLSTM when
  `seqclr_encoder_stage == "cnn"`."""
  enc = encoders.build(config)[0]
  if config.seqclr_encoder_stage == "cnn" and hasattr(enc, "lstm_layers"):
    enc = enc.clone(lstm_layers=0)
  return enc


def networks(config) -> dict:
  _check(config)
  nets = {"encoder": encoder_from_config(config)}
  dtype = encoders.compute_dtype(config)
  if config.projection == "bilstm":
    nets["projection"] = resnet.BiLSTM(config.proj_hidden_dim, config.proj_dim, dtype=dtype)
  elif config.projection == "mlp":  # per frame: Linear -> BN -> ReLU -> Linear
    nets["projection"] = heads.MLP(
      2, config.proj_hidden_dim, config.proj_dim, last_bn=False, dtype=dtype
    )
  return nets


def _apply(net, params, stats, x, train, rng=None):
  """Applies a network with or without BatchNorm -> (out, new stats or None)."""
  if isinstance(net, resnet.BiLSTM):
    return net.apply({"params": params}, x), stats
  return common.apply(
    net, params, stats, x, train=train, rngs={"dropout": rng} if rng is not None else {}
  )


def init_variables(config, rng, batch) -> dict:
  nets = networks(config)
  k_enc, k_proj = jax.random.split(rng)
  x = common.normalize(batch["image1"])
  v = nets["encoder"].init(k_enc, x, train=False)
  params, stats = {"encoder": v["params"]}, {"encoder": v.get("batch_stats", {})}
  if "projection" in nets:
    feats = jax.eval_shape(lambda v: nets["encoder"].apply(v, x), v)
    frames = jax.eval_shape(lambda f: encoders.to_frames(f, encoders.build(config)[1]), feats)
    kw = {} if isinstance(nets["projection"], resnet.BiLSTM) else {"train": False}
    pv = nets["projection"].init(k_proj, jnp.zeros(frames.shape, jnp.float32), **kw)
    params["projection"] = pv["params"]
    if "batch_stats" in pv:
      stats["projection"] = pv["batch_stats"]
  return {"params": params, "model_state": {"batch_stats": stats}}


def example_batch(config, size: int = 2) -> dict:
  """Zeros shaped like a training batch (for the shapes of `init_variables`)."""
  image = jnp.zeros((size, config.image_height, config.image_width, 3), jnp.uint8)
  return {"image1": image, "image2": image}


def phases(config):
  return [("main", ["encoder"] + (["projection"] if config.projection != "none" else []))]


# ----------------------------------------------------------------------------- instances
adaptive_pool_matrix = encoders.adaptive_pool_matrix  # [W, T] weights (models/encoders.py)


def instance_mapping(frames, mapping: str, num_windows: int = 5):
  """Frames `[B, T, D]` -> instances `[B, W, D]`.

  all: the mean of the T frames (W = 1); frame: every frame (W = T);
  window: adaptive average pooling of the T frames to W = num_windows windows.
  """
  if mapping == "all":
    return frames.mean(axis=1, keepdims=True)
  if mapping == "frame":
    return frames
  if mapping == "window":
    m = jnp.asarray(adaptive_pool_matrix(frames.shape[1], num_windows), frames.dtype)
    return jnp.einsum("wt,btd->bwd", m, frames)
  raise ValueError(f"instance_mapping={mapping!r} is unknown; valid: {', '.join(MAPPINGS)}")


def nt_xent(z1, z2, temperature: float):
  """SimCLR NT-Xent over the 2M instances `[z1; z2]` (z1, z2 `[M, C]`).

  Cosine similarities / temperature; an instance is never its own candidate; the positive of
  z1[k] is z2[k] and of z2[k] is z1[k]; loss = mean over all 2M rows of -log softmax at the
  positive. Returns (loss, accuracy: fraction of rows whose most similar candidate is the
  positive).
  """
  z = jnp.concatenate([z1, z2]).astype(jnp.float32)
  z = z / jnp.linalg.norm(z, axis=-1, keepdims=True).clip(1e-12)
  n = z.shape[0]
  m = n // 2
  logits = z @ z.T / temperature
  logits = jnp.where(jnp.eye(n, dtype=bool), -1e9, logits)
  positives = (jnp.arange(n) + m) % n
  # The positive logit row by row (z[i] . z[(i + M) % 2M]), not gathered from the row-sharded
  # logits (which would need them all-gathered).
  partner = jnp.concatenate([z[m:], z[:m]])
  logp = jnp.sum(z * partner, axis=-1) / temperature - jax.nn.logsumexp(logits, axis=-1)
  loss = -jnp.mean(logp)
  acc = jnp.mean(jnp.argmax(logits, axis=-1) == positives)
  return loss, acc


# ----------------------------------------------------------------------------- loss
def frames_of(nets, params, stats, images, config, train=True, rng=None):
  """uint8 images `[N, H, W, 3]` -> projected frames `[N, T, P]`, new batch_stats.

  Encoders with a 2-D token grid (the ViT: 8x32) are averaged over the height first.
  """
  stats = dict(stats)
  feats, stats["encoder"] = _apply(
    nets["encoder"], params["encoder"], stats["encoder"], common.normalize(images), train, rng
  )
  frames = encoders.to_frames(feats, encoders.build(config)[1])
  if "projection" in nets:
    frames, new = _apply(
      nets["projection"], params["projection"], stats.get("projection"), frames, train
    )
    if new is not None:
      stats["projection"] = new
  return frames, stats


def loss_fn(params, model_state, batch, rng, *, step, phase, config):
  """SeqCLR loss on a global batch -> (loss, (metrics, new model_state))."""
  del step, phase
  nets = networks(config)
  images = jnp.concatenate([batch["image1"], batch["image2"]])
  frames, stats = frames_of(nets, params, model_state["batch_stats"], images, config, rng=rng)
  inst = instance_mapping(frames.astype(jnp.float32), config.instance_mapping, config.num_windows)
  b, w, c = inst.shape
  z1, z2 = jnp.split(inst.reshape(b * w, c), 2)  # view 1 rows, then view 2, same (b, w) order
  loss, acc = nt_xent(z1, z2, config.temperature)
  metrics = {"contrastive_acc": acc, "num_instances": jnp.asarray(b * w, jnp.float32)}
  return loss, (metrics, {**model_state, "batch_stats": stats})


def after_update(params, model_state, step, config):
  del params, step, config
  return model_state


def probe_features(params, model_state, images, config):
  """Frozen encoder frames (before the projection head: what fine-tuning loads) for the
  representation probe (train/probe.py): images uint8 [B, H, W, 3] -> [B, T, D] (T = 33 for
  32 x 128 with the ResNet), BatchNorm with its running statistics."""
  stats = model_state["batch_stats"]["encoder"] or None
  grid_h = encoders.build(config)[1]
  return common.probe_frames(encoder_from_config(config), grid_h, params["encoder"], stats, images)


# ----------------------------------------------------------------------------- visuals
def visualize(params, model_state, batch, rng, config, num_images: int = 8) -> dict:
  """Rows of (view 1 | view 2 [| view 1 after TPS rectification]), uint8 grid."""
  del rng
  image1, image2 = batch["image1"][:num_images], batch["image2"][:num_images]
  panels = [image1.astype(jnp.float32) / 255, image2.astype(jnp.float32) / 255]
  enc = encoder_from_config(config)
  if getattr(enc, "tps", False):
    variables = {"params": params["encoder"], "batch_stats": model_state["batch_stats"]["encoder"]}
    _, out = enc.apply(variables, common.normalize(image1), train=False, mutable=["intermediates"])
    rectified = out["intermediates"]["rectified"][0].astype(jnp.float32)
    panels.append((rectified + 1.0) / 2.0)
  return {"seqclr_views": common.image_grid(panels)}

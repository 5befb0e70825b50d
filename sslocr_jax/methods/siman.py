"""SimAN: similarity-aware normalization pretraining (generative, with an adversarial loss).

Luo et al., "SimAN: Exploring Self-Supervised Representation Learning of Scene Text via
Similarity-Aware Normalization", CVPR 2022. No official code: built from the paper's
description (docs/siman.md); the choices the paper leaves open are config fields,
marked "ours" here and in docs/siman.md.

Views (host): the line resized to 32 x 2W and cut into two adjacent 32 x W patches; one side
(random) is the target, the other the source; the target gets a style-only augmentation
(`augment.siman_style`, pixel-aligned). Batch: source, augmented, target uint8 [B, 32, W, 3].

    Fs, Fa = encoder(source), encoder(augmented)        [B, N, D] (one call, shared weights)
    Y, A   = SAN(Fa, Fs)                                [B, N, D], [B, N, N] (models/siman_nets)
    restored = decoder(Y as a grid_h x grid_w map)      [B, 32, W, 3] in [-1, 1]
    generator phase (encoder, san, decoder):
      loss = pixel_weight * L2 (or L1) (restored, target) + w(step) * (-mean D(restored))
      w(step) = adv_weight after adv_warmup_steps, 0 before (L2-only warm-up)
    discriminator phase (discriminator), restored recomputed with the updated generator:
      loss = mean relu(1 - D(target)) + mean relu(1 + D(restored))   (hinge, PatchGAN logits)

Pixels are compared in the network's [-1, 1] range. Metrics: pixel_loss, adv_loss (the
generator's hinge term, logged during the warm-up too), adv_weight, disc_real_loss,
disc_fake_loss, disc_accuracy (share of patch logits on the right side of 0, real and fake
averaged); the step adds generator/loss, discriminator/loss, ... and `loss` = generator/loss.

Networks (params): encoder, san, decoder, discriminator. model_state: {"batch_stats":
{"encoder": ...}} for encoders with BatchNorm (resnet; the layout of methods/recognition.py, so
`configs/finetune.py` loads it with `init_from`), else {}.
"""

import jax
import jax.numpy as jnp
import numpy as np

from sslocr_jax.data import augment
from sslocr_jax.methods import common
from sslocr_jax.models import encoders
from sslocr_jax.models import siman_nets

GENERATOR = ("encoder", "san", "decoder")


# ----------------------------------------------------------------------------- views (host)
def adjacent_patches(image: np.ndarray, rng: np.random.Generator, height: int, width: int):
  """uint8 line [H0, W0, 3] -> (source, target) uint8 [height, width, 3]: the line resized to
  height x 2*width, cut in halves; the target side is random (ours: p = 0.5)."""
  line = augment.resize(augment.to_rgb_uint8(image), height, 2 * width)
  left, right = line[:, :width], line[:, width:]
  if rng.random() < 0.5:
    left, right = right, left
  return np.ascontiguousarray(left), np.ascontiguousarray(right)


def make_views(record, rng: np.random.Generator, config) -> dict:
  """record {"image"} -> {source, augmented, target: uint8 [32, W, 3]}, W = config.image_width."""
  source, target = adjacent_patches(record["image"], rng, config.image_height, config.image_width)
  return {"source": source, "augmented": augment.siman_style(target, rng), "target": target}


# ----------------------------------------------------------------------------- networks
def encoder_from_config(config):
  """The encoder of `config.model` (models/encoders.py), applied to 32 x W patches."""
  return encoders.build(config)[0]


def networks(config) -> dict:
  return {
    "encoder": encoder_from_config(config),
    "san": siman_nets.SAN(proj_dim=config.san_dim, eps=config.san_eps, in_eps=config.in_eps),
    "decoder": siman_nets.Decoder(
      out_size=(config.image_height, config.image_width),
      width=config.decoder_width,
      num_upsamples=config.decoder_upsamples,
    ),
    "discriminator": siman_nets.Discriminator(
      width=config.disc_width, num_layers=config.disc_layers, norm=config.disc_norm
    ),
  }


def feature_map(features, grid_h: int):
  """[B, N, D] row-major on a grid_h x (N / grid_h) grid -> [B, grid_h, N / grid_h, D]."""
  b, n, d = features.shape
  return features.reshape(b, grid_h, n // grid_h, d)


def init_variables(config, rng, batch) -> dict:
  nets = networks(config)
  _, grid_h = encoders.build(config)
  k = jax.random.split(rng, 4)
  x = common.normalize(batch["source"])
  enc = nets["encoder"].init(k[0], x)  # boxed: the loop reads the logical axis names
  # Only the shapes of the features are needed (no forward pass to compile at init).
  feats = jnp.zeros(jax.eval_shape(nets["encoder"].apply, enc, x).shape, jnp.float32)
  params = {"encoder": enc["params"]}
  params["san"] = nets["san"].init(k[1], feats, feats)["params"]
  params["decoder"] = nets["decoder"].init(k[2], feature_map(feats, grid_h))["params"]
  params["discriminator"] = nets["discriminator"].init(k[3], x)["params"]
  model_state = {"batch_stats": {"encoder": enc["batch_stats"]}} if "batch_stats" in enc else {}
  return {"params": params, "model_state": model_state}


def example_batch(config, size: int = 2) -> dict:
  """Zeros shaped like a training batch (for the shapes of `init_variables`)."""
  image = jnp.zeros((size, config.image_height, config.image_width, 3), jnp.uint8)
  return {"source": image, "augmented": image, "target": image}


def phases(config):
  del config
  return [("generator", list(GENERATOR)), ("discriminator", ["discriminator"])]


# ----------------------------------------------------------------------------- forward
def encode(params, model_state, images, config, *, train: bool, rng=None):
  """uint8 [B, H, W, 3] -> (features [B, N, D], new encoder batch_stats or None)."""
  encoder = encoder_from_config(config)
  stats = model_state.get("batch_stats", {}).get("encoder")
  rngs = {"dropout": rng} if (train and rng is not None) else {}
  return common.apply(
    encoder, params["encoder"], stats, common.normalize(images), train=train, rngs=rngs
  )


def restore(params, model_state, source, augmented, config, *, train: bool, rng=None):
  """Restores the augmented patch in the source's style.

  source, augmented uint8 [B, H, W, 3] -> (restored [B, H, W, 3] in [-1, 1],
  attention [B, N, N], new encoder batch_stats or None). Both patches go through the
  encoder in one call (BatchNorm statistics over both).
  """
  nets = networks(config)
  _, grid_h = encoders.build(config)
  feats, stats = encode(
    params, model_state, jnp.concatenate([source, augmented]), config, train=train, rng=rng
  )
  fs, fa = jnp.split(feats, 2)
  restyled, attn = nets["san"].apply({"params": params["san"]}, fa, fs)
  restored = nets["decoder"].apply({"params": params["decoder"]}, feature_map(restyled, grid_h))
  return restored, attn, stats


def discriminate(params, images, config):
  """images float [B, H, W, 3] in [-1, 1] -> patch logits [B, h, w, 1]."""
  return networks(config)["discriminator"].apply({"params": params["discriminator"]}, images)


# ----------------------------------------------------------------------------- losses
def pixel_loss(pred, target, kind: str = "l2"):
  """Mean L2 (squared error) or L1 over all pixels and channels, [-1, 1] units."""
  diff = pred.astype(jnp.float32) - target
  if kind == "l2":
    return jnp.mean(jnp.square(diff))
  if kind == "l1":
    return jnp.mean(jnp.abs(diff))
  raise ValueError(f"config.pixel_loss={kind!r} is unknown; valid: l2, l1")


def hinge_discriminator(real_logits, fake_logits):
  """-> (mean relu(1 - real), mean relu(1 + fake)); the discriminator's loss is their sum."""
  return jnp.mean(jax.nn.relu(1.0 - real_logits)), jnp.mean(jax.nn.relu(1.0 + fake_logits))


def discriminator_accuracy(real_logits, fake_logits):
  """Share of patch logits on the right side of 0 (real > 0, fake < 0), both halves averaged."""
  return 0.5 * (
    jnp.mean((real_logits > 0).astype(jnp.float32))
    + jnp.mean((fake_logits < 0).astype(jnp.float32))
  )


def adv_weight_at(step, config):
  """The adversarial weight: 0 during the L2-only warm-up, then `adv_weight` (ours: 0.1)."""
  return jnp.where(step >= config.adv_warmup_steps, config.adv_weight, 0.0).astype(jnp.float32)


def loss_fn(params, model_state, batch, rng, *, step, phase, config):
  """SimAN losses of one phase on a global batch -> (loss, (metrics, new model_state))."""
  target = common.normalize(batch["target"])
  if phase == "generator":
    restored, _, stats = restore(
      params, model_state, batch["source"], batch["augmented"], config, train=True, rng=rng
    )
    metrics = {
      "pixel_loss": pixel_loss(restored, target, config.pixel_loss),
      "adv_loss": -jnp.mean(discriminate(params, restored, config)),
      "adv_weight": adv_weight_at(step, config),
    }
    loss = config.pixel_weight * metrics["pixel_loss"] + metrics["adv_weight"] * metrics["adv_loss"]
    if stats is not None:
      model_state = {**model_state, "batch_stats": {**model_state["batch_stats"], "encoder": stats}}
    return loss, (metrics, model_state)
  if phase == "discriminator":
    # The generator in training mode (as the generator phase saw it); its BatchNorm
    # statistics were already updated by that phase, so this pass's are dropped.
    restored, _, _ = restore(
      params, model_state, batch["source"], batch["augmented"], config, train=True, rng=rng
    )
    restored = jax.lax.stop_gradient(restored)
    # One call on [real; fake]: the discriminator normalizes per example, so this equals
    # two calls.
    real, fake = jnp.split(discriminate(params, jnp.concatenate([target, restored]), config), 2)
    real_loss, fake_loss = hinge_discriminator(real, fake)
    metrics = {
      "disc_real_loss": real_loss,
      "disc_fake_loss": fake_loss,
      "disc_accuracy": discriminator_accuracy(real, fake),
    }
    return real_loss + fake_loss, (metrics, model_state)
  raise ValueError(f"phase={phase!r} is unknown; valid: generator, discriminator")


def after_update(params, model_state, step, config):
  del params, step, config
  return model_state


def probe_features(params, model_state, images, config):
  """Frozen encoder frames for the representation probe (train/probe.py): images uint8
  [B, H, W, 3] -> [B, T, D] (BatchNorm with its running statistics). The ResNet takes lines
  of any width (`probe.image_width`); the ViT only its own `image_width`."""
  return common.encoder_probe_features(params, model_state, images, config)


# ----------------------------------------------------------------------------- visuals
def visualize(params, model_state, batch, rng, config, num_images: int = 8) -> dict:
  """Grid of rows (source | augmented target | restored | original target), uint8."""
  del rng
  source, augmented, target = (batch[k][:num_images] for k in ("source", "augmented", "target"))
  restored, _, _ = restore(params, model_state, source, augmented, config, train=False)
  to01 = lambda x: x.astype(jnp.float32) / 255.0
  panels = [to01(source), to01(augmented), (restored + 1.0) / 2.0, to01(target)]
  return {"siman_restoration": common.image_grid(panels)}

"""DiG: discriminative (MoCo v3 on window instances) + generative (SimMIM) pretraining.

Yang et al., "Reading and Writing: Discriminative and Generative Modeling for Self-Supervised
Text Recognition", ACM MM 2022; settings of the official release (github.com/ayumiymk/DiG).

Views (host): image1 = the original line resized to 32x128, masked on the device by `mask`
(70% of the 256 patches); image2 = a strongly augmented copy.

    tokens1 = encoder(image1, mask)            [B, 256, D]
    tokens2 = encoder(image2)                  [B, 256, D]
    MIM:   mim_head(tokens1) vs raw pixels of image1 in [0, 1], L2 on masked patches only
    CL:    windows(tokens) -> [B*W, D]  (8x32 grid average-pooled to 1 x W)
           q1 = predictor(projector(windows(pix_projector(tokens1))))   (per-token pix projector)
           q2 = predictor(projector(windows(tokens2)))
           (as in the release, both views go through projector/predictor in one call, so
           BatchNorm statistics are over both views of the global batch)
           k1, k2 = the same through the momentum encoder / pix_projector / projector (EMA)
           loss = 2T * [CE(q1 . k2 / T) + CE(q2 . k1 / T)] over the global batch
    total = mim_weight * MIM + contrastive_weight * CL

Both views share each encoder / projector call. They are interleaved (`pair`: [B, ...] x 2 ->
[2B, ...], rows 2i and 2i+1 = views 1 and 2 of example i), not concatenated as in the release,
so each device keeps its own examples under a batch-sharded mesh (no all-to-all); each
BatchNorm / contrastive computation sees the same set of rows, only their order differs.

Ablation arms (`config.branches`, as the release builds them): "both" (DiG); "contrastive"
(`use_pixel_target=False`: view 1 unmasked, no pix projector, no MIM head: MoCo v3 on the two
views); "mim" (`use_moco_target=False`: SimMIM alone, no contrastive or momentum networks).

Networks (params): encoder, mim_head, pix_projector, projector, predictor (those of the branches).
model_state: "ema" (momentum copies of encoder, pix_projector, projector) and "batch_stats".
"""

import jax
import jax.numpy as jnp
import numpy as np

from sslocr_jax import config_utils
from sslocr_jax import errors
from sslocr_jax.data import augment
from sslocr_jax.methods import common
from sslocr_jax.models import encoders
from sslocr_jax.models import heads
from sslocr_jax.models import torch_mapping

PATCH = 4
MOMENTUM_NETS = ("encoder", "pix_projector", "projector")
BN_NETS = ("pix_projector", "projector", "predictor")
BRANCHES = ("both", "contrastive", "mim")  # config.branches


def branches(config) -> tuple[bool, bool]:
  """(mim, contrastive): which branches `config.branches` builds (default "both").

  contrastive = the release's `use_pixel_target=False` (no mask on view 1, no pix projector,
  no MIM head); mim = `use_moco_target=False` (no projector, predictor or momentum networks).
  """
  b = config.get("branches", "both")
  if b not in BRANCHES:
    raise ValueError(f"config.branches={b!r} is unknown; valid: {', '.join(BRANCHES)}")
  return b != "contrastive", b != "mim"


def momentum_nets(config) -> tuple[str, ...]:
  """The networks with a momentum (EMA) copy under `config.branches`."""
  mim, contrast = branches(config)
  if not contrast:
    return ()
  return MOMENTUM_NETS if mim else ("encoder", "projector")


# ----------------------------------------------------------------------------- views (host)
def make_views(record, rng: np.random.Generator, config) -> dict:
  """record {"image": uint8 [H, W, 3]} -> {image1, image2: uint8 [32, 128, 3], mask: bool [256]}."""
  h, w = config.image_height, config.image_width
  image = record["image"]
  num_patches = (h // PATCH) * (w // PATCH)
  return {
    "image1": augment.resize(image, h, w),
    "image2": augment.dig_view2(image, rng, h, w),
    "mask": augment.random_patch_mask(rng, num_patches, config.mask_ratio),
  }


# ----------------------------------------------------------------------------- networks
def encoder_from_config(config):
  """The ViT encoder of `config.model` (models/encoders.py)."""
  return encoders.build(config)[0]


def networks(config) -> dict:
  """The networks of `config.branches`: encoder [, mim_head] [, pix_projector (both only)]
  [, projector, predictor]."""
  d = config.model.embed_dim
  mim, contrast = branches(config)
  nets = {"encoder": encoder_from_config(config)}
  if mim:
    nets["mim_head"] = heads.MimHead(
      embed_dim=d, hidden=config.mim_hidden_dim, patch_pixels=PATCH * PATCH * 3
    )
  if mim and contrast:
    nets["pix_projector"] = heads.pix_projector(d, config.pix_hidden_dim)
  if contrast:
    nets["projector"] = heads.projector(config.proj_hidden_dim, config.proj_dim)
    nets["predictor"] = heads.predictor(config.pred_hidden_dim, config.proj_dim)
  return nets


def patchify(images):
  """uint8 [B, 32, 128, 3] -> pixels in [0, 1], [B, 256, 48] laid out (p1 p2 c)."""
  b, h, w, c = images.shape
  x = images.astype(jnp.float32).reshape(b, h // PATCH, PATCH, w // PATCH, PATCH, c) / 255.0
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, (h // PATCH) * (w // PATCH), PATCH * PATCH * c)


def unpatchify(patches, h: int, w: int):
  """[B, 256, 48] -> [B, 32, 128, 3] (inverse of `patchify`, values unchanged)."""
  b = patches.shape[0]
  x = patches.reshape(b, h // PATCH, w // PATCH, PATCH, PATCH, 3)
  return x.transpose(0, 1, 3, 2, 4, 5).reshape(b, h, w, 3)


def windows(tokens, grid_h: int, num_windows: int):
  """Patch-wise instance mapping: [B, N, D] -> [B * num_windows, D].

  The grid_h x (N / grid_h) token grid is average-pooled to 1 x num_windows windows, as the
  release's `F.adaptive_avg_pool2d(x, (1, num_windows))` (modeling_pretrain_moco_mim_ori.py):
  any num_windows from 1 to the grid width; windows overlap when it does not divide the width.
  """
  b, n, d = tokens.shape
  grid_w = n // grid_h
  if not 1 <= num_windows <= grid_w:
    raise ValueError(f"num_windows={num_windows} must be in 1..{grid_w} (the token grid's width)")
  frames = encoders.to_frames(tokens.astype(jnp.float32), grid_h)  # [B, grid_w, D]
  m = jnp.asarray(encoders.adaptive_pool_matrix(grid_w, num_windows))
  return jnp.einsum("wt,btd->bwd", m, frames).reshape(b * num_windows, d)


def init_variables(config, rng, batch) -> dict:
  nets = networks(config)
  ks = jax.random.split(rng, 5)
  x = common.normalize(batch["image1"])
  tokens = nets["encoder"].init(ks[0], x, batch["mask"])["params"]
  feats = jnp.zeros((x.shape[0] * config.num_windows, config.model.embed_dim))
  params = {"encoder": tokens}
  if "mim_head" in nets:
    params["mim_head"] = nets["mim_head"].init(ks[1], jnp.zeros((2, 4, config.model.embed_dim)))[
      "params"
    ]
  batch_stats = {}
  for i, (name, inp) in enumerate(
    [
      ("pix_projector", feats),
      ("projector", feats),
      ("predictor", jnp.zeros((feats.shape[0], config.proj_dim))),
    ]
  ):
    if name not in nets:
      continue
    v = nets[name].init(ks[2 + i], inp, train=False)
    params[name] = v["params"]
    batch_stats[name] = v["batch_stats"]
  ema = {name: params[name] for name in momentum_nets(config)}
  batch_stats.update(
    {f"{name}_m": batch_stats[name] for name in ("pix_projector", "projector") if name in ema}
  )
  return {"params": params, "model_state": {"ema": ema, "batch_stats": batch_stats}}


INIT_FROM = "auto"  # a PyTorch state dict: the whole model, or an encoder-only file


def load_pretrained(state, config, source):
  """`config.init_from` = a PyTorch state dict (resolved by train/resolve.py into `source`):
  an official DiG `.pth` (weights under "model") or an exported `.safetensors` / `.pth`. A full
  DiG file sets every network, momentum copy and BatchNorm statistic; an encoder-only file
  (`encoder.*`) sets the encoder and its momentum copy. Called by the train loop on a fresh run;
  a key mismatch is an error listing the missing and unknown keys (raised by the resolver)."""
  path = config.get("init_from", "")
  if not source.path.endswith((".safetensors", ".pth", ".pt", ".bin")):
    raise errors.UserError(
      f"config.init_from={path!r}: DiG pretraining starts from a PyTorch "
      "state dict (.pth / .pt / .safetensors); to continue a JAX run, "
      "reuse its workdir"
    )
  imported = torch_mapping.flatten({"params": source.params, "model_state": source.model_state})
  if not any(k.startswith("model_state/ema/") for k in imported):  # an encoder-only file
    imported.update(
      {
        "model_state/ema/" + k[len("params/") :]: v
        for k, v in imported.items()
        if k.startswith("params/encoder/")
      }
    )
  target = torch_mapping.flatten({"params": state.params, "model_state": state.model_state})
  put = lambda k: jax.device_put(np.asarray(imported[k], target[k].dtype), target[k].sharding)
  new = torch_mapping.unflatten({k: put(k) if k in imported else v for k, v in target.items()})
  return state.replace(params=new["params"], model_state=new.get("model_state", {}))


def phases(config):
  return [("main", list(networks(config)))]


# ----------------------------------------------------------------------------- losses
def mim_target(images, kind: str = "pixels"):
  """What the MIM head predicts for each patch: uint8 [B, 32, 128, 3] -> [B, 256, 48].

  pixels: the patch in [0, 1] (the release's target). centred: the patch minus its own mean
  (ours): a flat patch's target is 0, so the background level of a line earns nothing.
  normalized: minus the mean, over the standard deviation (MAE's `norm_pix_loss`,
  facebookresearch/mae models_mae.py: unbiased variance + 1e-6).
  """
  x = patchify(images)
  if kind == "pixels":
    return x
  x = x - jnp.mean(x, axis=-1, keepdims=True)
  if kind == "centred":
    return x
  if kind == "normalized":
    return x / jnp.sqrt(jnp.var(x, axis=-1, keepdims=True, ddof=1) + 1e-6)
  raise ValueError(f"config.mim_target={kind!r} is unknown; valid: pixels, centred, normalized")


def mim_loss(pred, target, mask):
  """Mean squared error over the masked patches only. pred/target [B, N, P], mask [B, N]."""
  per_patch = jnp.mean(jnp.square(pred.astype(jnp.float32) - target), axis=-1)
  m = mask.astype(jnp.float32)
  return jnp.sum(per_patch * m) / jnp.maximum(jnp.sum(m), 1.0)


def info_nce(q, k, temperature: float):
  """MoCo-v3 contrastive loss, scaled by 2T. q, k [N, C]; positives on the diagonal."""
  q = q / jnp.linalg.norm(q, axis=-1, keepdims=True).clip(1e-12)
  k = k / jnp.linalg.norm(k, axis=-1, keepdims=True).clip(1e-12)
  k = jax.lax.stop_gradient(k)
  logits = jnp.einsum("nc,mc->nm", q, k) / temperature
  # The positive logit row by row (q[n] . k[n]), not gathered from the diagonal of `logits`:
  # with q and k split by rows over devices, the diagonal of a row-sharded matrix would make
  # XLA gather the logits; this needs only the all-gather of k for the negatives.
  positive = jnp.sum(q * k, axis=-1) / temperature
  logp = positive - jax.nn.logsumexp(logits, axis=-1)
  return -jnp.mean(logp) * 2.0 * temperature


def momentum_at(step, config):
  """Cosine schedule of the key-encoder momentum from `config.momentum` to 1.0."""
  t = jnp.minimum(step / max(config_utils.schedule_steps(config), 1), 1.0)
  return 1.0 - (1.0 - config.momentum) * (jnp.cos(jnp.pi * t) + 1.0) / 2.0


def _bn_apply(net, params, stats, x):
  return common.apply(net, params, stats, x, train=True)


def _pix_project(net, params, stats, tokens):
  """Per-token pix projector on the masked view: [B, N, D] -> [B, N, D] (BN over B*N tokens)."""
  b, n, d = tokens.shape
  out, stats = _bn_apply(net, params, stats, tokens.reshape(b * n, d))
  return out.reshape(b, n, -1), stats


def pair(a, b):
  """Interleaves two [B, ...] arrays into [2B, ...] (rows 2i = a[i], 2i+1 = b[i]).

  Unlike concatenation, each row stays on the device of its example when B is sharded.
  """
  return jnp.stack([a, b], axis=1).reshape((2 * a.shape[0],) + a.shape[1:])


def unpair(x):
  """Inverse of `pair`: [2B, ...] -> ([B, ...], [B, ...])."""
  x = x.reshape((x.shape[0] // 2, 2) + x.shape[1:])
  return x[:, 0], x[:, 1]


def _instances(tokens1, tokens2, config):
  """Both views' window instances (`pair`ed): [2 * B * W, D]."""
  grid_h = config.image_height // PATCH
  return pair(
    windows(tokens1, grid_h, config.num_windows), windows(tokens2, grid_h, config.num_windows)
  )


def _query_branch(nets, params, stats, tokens1, tokens2, config):
  """q1, q2 [B*W, proj_dim]: [pix_projector (view 1)] -> windows -> projector -> predictor."""
  p1 = tokens1
  if "pix_projector" in nets:
    p1, stats["pix_projector"] = _pix_project(
      nets["pix_projector"], params["pix_projector"], stats["pix_projector"], tokens1
    )
  z, stats["projector"] = _bn_apply(
    nets["projector"], params["projector"], stats["projector"], _instances(p1, tokens2, config)
  )
  q, stats["predictor"] = _bn_apply(nets["predictor"], params["predictor"], stats["predictor"], z)
  q1, q2 = unpair(q)
  return q1, q2, stats


def _key_branch(nets, ema, stats, tokens1, tokens2, config):
  """k1, k2 [B*W, proj_dim] from the momentum networks (BN statistics of their own)."""
  p1 = tokens1
  if "pix_projector" in nets:
    p1, stats["pix_projector_m"] = _pix_project(
      nets["pix_projector"], ema["pix_projector"], stats["pix_projector_m"], tokens1
    )
  k, stats["projector_m"] = _bn_apply(
    nets["projector"], ema["projector"], stats["projector_m"], _instances(p1, tokens2, config)
  )
  k1, k2 = unpair(k)
  return k1, k2, stats


def loss_fn(params, model_state, batch, rng, *, step, phase, config):
  """DiG loss on a global batch -> (loss, (metrics, new model_state))."""
  del phase
  nets = networks(config)
  mim, contrast = branches(config)
  stats = dict(model_state["batch_stats"])
  ema = model_state["ema"]
  # The contrastive-only arm sees view 1 unmasked (the release's use_pixel_target=False).
  mask = batch["mask"] if mim else jnp.zeros_like(batch["mask"])
  # Both views through the encoder in one call (view 2 unmasked), as in the release.
  x = common.normalize(pair(batch["image1"], batch["image2"]))
  both_mask = pair(mask, jnp.zeros_like(mask))
  enc = nets["encoder"]
  tokens1, tokens2 = unpair(
    enc.apply({"params": params["encoder"]}, x, both_mask, train=True, rngs={"dropout": rng})
  )
  metrics = {"momentum": momentum_at(step, config)}
  loss = 0.0
  if mim and config.mim_weight:
    pred = nets["mim_head"].apply({"params": params["mim_head"]}, tokens1)
    metrics["mim_loss"] = mim_loss(
      pred, mim_target(batch["image1"], config.get("mim_target", "pixels")), mask
    )
    loss += config.mim_weight * metrics["mim_loss"]
  if contrast and config.contrastive_weight:
    q1, q2, stats = _query_branch(nets, params, stats, tokens1, tokens2, config)
    # Key branch: momentum encoder / pix_projector / projector, no gradients.
    m_tokens1, m_tokens2 = unpair(enc.apply({"params": ema["encoder"]}, x, both_mask, train=False))
    k1, k2, stats = _key_branch(nets, ema, stats, m_tokens1, m_tokens2, config)
    k1, k2 = jax.lax.stop_gradient(k1), jax.lax.stop_gradient(k2)
    metrics["contrastive_loss"] = info_nce(q1, k2, config.temperature) + info_nce(
      q2, k1, config.temperature
    )
    loss += config.contrastive_weight * metrics["contrastive_loss"]
  return loss, (metrics, {**model_state, "batch_stats": stats})


def after_update(params, model_state, step, config):
  """Momentum (EMA) update of the key networks: ema = m * ema + (1 - m) * params."""
  m = momentum_at(step, config)
  ema = {
    name: jax.tree.map(lambda e, p: m * e + (1.0 - m) * p, model_state["ema"][name], params[name])
    for name in momentum_nets(config)
  }
  return {**model_state, "ema": ema}


def probe_features(params, model_state, images, config):
  """Frozen features of the online encoder (the one fine-tuning loads) for the representation
  probe (train/probe.py): images uint8 [B, 32, 128, 3] -> [B, 32, D], the 8 x 32 token grid
  averaged over its height."""
  del model_state  # the ViT has no BatchNorm; the momentum copy is not probed
  encoder, grid_h = encoders.build(config)
  return common.probe_frames(encoder, grid_h, params["encoder"], None, images)


# ----------------------------------------------------------------------------- export
def example_batch(config, size: int = 2) -> dict:
  """Zeros shaped like a training batch (for the shapes of `init_variables`)."""
  h, w = config.image_height, config.image_width
  image = jnp.zeros((size, h, w, 3), jnp.uint8)
  return {
    "image1": image,
    "image2": image,
    "mask": jnp.zeros((size, (h // PATCH) * (w // PATCH)), bool),
  }


def export_networks(config) -> tuple[list, dict]:
  """The official DiG pretraining layout beyond the encoder, for models/torch_mapping.py:
  ([(torch prefix, [jax roots], style)], {} fixed tables)."""
  del config
  bs = "model_state/batch_stats/"
  return [
    ("momentum_encoder.", ["model_state/ema/encoder"], "vit"),
    ("pix_decoder.", ["params/mim_head"], "mim"),
    ("pix_projector.", ["params/pix_projector", bs + "pix_projector"], "mlp"),
    ("pix_projector_m.", ["model_state/ema/pix_projector", bs + "pix_projector_m"], "mlp"),
    ("encoder_projection_layer.", ["params/projector", bs + "projector"], "mlp"),
    ("momentum_projection_layer.", ["model_state/ema/projector", bs + "projector_m"], "mlp"),
    ("predictor.", ["params/predictor", bs + "predictor"], "mlp"),
  ], {}


def export_metadata(config) -> dict:
  """Fields of the exported model JSON (export/cli.py): the sizes of the heads."""
  return {
    "heads": {
      k: int(config[k])
      for k in (
        "mim_hidden_dim",
        "pix_hidden_dim",
        "proj_hidden_dim",
        "proj_dim",
        "pred_hidden_dim",
      )
    }
  }


# ----------------------------------------------------------------------------- visuals
def visualize(params, model_state, batch, rng, config, num_images: int = 8) -> dict:
  """Grid of rows (original | masked | reconstruction | augmented view), uint8 [H', W', 3]."""
  del model_state, rng
  h, w = config.image_height, config.image_width
  image1, image2, mask = (batch[k][:num_images] for k in ("image1", "image2", "mask"))
  if "mim_head" not in params:  # the contrastive-only arm: the two views
    return {
      "dig_views": common.image_grid(
        [image1.astype(jnp.float32) / 255, image2.astype(jnp.float32) / 255]
      )
    }
  tokens = encoder_from_config(config).apply(
    {"params": params["encoder"]}, common.normalize(image1), mask, train=False
  )
  pred = networks(config)["mim_head"].apply({"params": params["mim_head"]}, tokens)
  target, m = patchify(image1), mask[..., None].astype(jnp.float32)
  masked = target * (1 - m) + 0.5 * m
  pred = pred.astype(jnp.float32)
  if config.get("mim_target", "pixels") != "pixels":
    # A centred / normalized prediction has no level of its own: shown on mid-grey, scaled
    # so that the patch's largest deviation reaches black or white.
    pred = 0.5 + 0.5 * pred / jnp.max(jnp.abs(pred), axis=-1, keepdims=True).clip(1e-6)
  recon = target * (1 - m) + jnp.clip(pred, 0, 1) * m
  panels = [
    image1.astype(jnp.float32) / 255,
    unpatchify(masked, h, w),
    unpatchify(recon, h, w),
    image2.astype(jnp.float32) / 255,
  ]
  return {"dig_reconstruction": common.image_grid(panels)}

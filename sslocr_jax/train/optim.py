"""Optimizers, learning-rate schedules and weight-decay masks (optax).

One optimizer per training phase (`method.phases`); each is built from a config block:

    optim = dict(name="adamw", base_lr=1.5e-4, lr_batch_base=256, warmup_steps=0,
                 warmup_fraction=0.03, end_lr=1e-5, weight_decay=0.1, b1=0.9, b2=0.999,
                 grad_clip=0.0, layer_decay=1.0)

The peak learning rate is `base_lr * global_batch / lr_batch_base` (linear scaling rule).
`lr_mult` ({network: factor}, e.g. {"encoder": 0.3}) scales one network's updates (its
learning rate, warm-up and schedule shape unchanged). The warm-up is `warmup_steps` when > 0, else `warmup_fraction` of the schedule (so that a
short run warms up for the same share of its length as a long one: DiG's release states it in
epochs, `--warmup_epochs 1` of 10 when fine-tuning, or 5000 of ~154k steps when pretraining).
"""

import re

import jax
import jax.numpy as jnp
import optax

NO_DECAY_NAMES = ("mask_token", "q_bias", "v_bias", "pos_embed", "cls_token")


def peak_lr(optim_config, global_batch: int) -> float:
  base = optim_config.get("lr_batch_base", 0) or 0
  return optim_config.base_lr * (global_batch / base if base else 1.0)


def warmup_steps(optim_config, total_steps: int) -> int:
  """`warmup_steps` if > 0, else round(`warmup_fraction` * total_steps) (0 if neither)."""
  steps = int(optim_config.get("warmup_steps", 0) or 0)
  if steps > 0:
    return steps
  return int(round(float(optim_config.get("warmup_fraction", 0.0) or 0.0) * total_steps))


def schedule(optim_config, global_batch: int, total_steps: int) -> optax.Schedule:
  """Linear warm-up from 0 to the peak, then cosine down to `end_lr` at `total_steps`."""
  peak = peak_lr(optim_config, global_batch)
  warmup = min(warmup_steps(optim_config, total_steps), max(total_steps - 1, 0))
  end = float(optim_config.get("end_lr", 0.0))
  return optax.warmup_cosine_decay_schedule(
    init_value=0.0,
    peak_value=peak,
    warmup_steps=warmup,
    decay_steps=max(total_steps, warmup + 1),
    end_value=min(end, peak),
  )


def decay_mask(params):
  """True where weight decay applies: kernels (ndim >= 2), not norms, biases or mask tokens."""

  def keep(path, leaf):
    names = [getattr(k, "key", getattr(k, "name", str(k))) for k in path]
    return leaf.ndim >= 2 and not any(n in NO_DECAY_NAMES for n in names)

  return jax.tree_util.tree_map_with_path(keep, params)


def layer_id(path_names: tuple[str, ...], num_layers: int) -> int:
  """Layer index for layer-wise lr decay of a ViT encoder: embeddings 0, block i -> i+1, rest top."""
  joined = "/".join(path_names)
  m = re.search(r"blocks_(\d+)", joined)
  if m:
    return int(m.group(1)) + 1
  if any(n in joined for n in ("patch_embed", "mask_token", "pos_embed")):
    return 0
  return num_layers + 1


def num_blocks(params) -> int:
  """Transformer blocks (`blocks_<i>`) in a param tree: the depth layer decay counts down
  from, read from the trainable params themselves (0 without blocks, e.g. a ResNet encoder
  or a frozen one), so neither this module nor the loop reads a model config field."""
  found = set()

  def visit(path, _):
    m = re.search(r"blocks_(\d+)", "/".join(str(getattr(k, "key", k)) for k in path))
    if m:
      found.add(int(m.group(1)))

  jax.tree_util.tree_map_with_path(visit, params)
  return max(found) + 1 if found else 0


def make_optimizer(
  optim_config, params, global_batch: int, total_steps: int, num_layers: int | None = None
) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """Returns (optax transformation, lr schedule) for one phase's trainable `params`
  (`num_layers` for layer decay: by default `num_blocks(params)`)."""
  if num_layers is None:
    num_layers = num_blocks(params)
  lr = schedule(optim_config, global_batch, total_steps)
  name = optim_config.get("name", "adamw")
  if name == "adamw":
    core = optax.adamw(
      lr,
      b1=optim_config.get("b1", 0.9),
      b2=optim_config.get("b2", 0.999),
      eps=optim_config.get("eps", 1e-8),
      weight_decay=optim_config.get("weight_decay", 0.0),
      mask=decay_mask,
    )
  elif name == "adam":
    core = optax.adam(lr, b1=optim_config.get("b1", 0.9), b2=optim_config.get("b2", 0.999))
  elif name == "sgd":
    core = optax.sgd(lr, momentum=optim_config.get("momentum", 0.9))
  else:
    raise ValueError(f"config optim.name={name!r} is unknown; valid: adamw, adam, sgd")
  parts = []
  if optim_config.get("grad_clip", 0.0):
    parts.append(optax.clip_by_global_norm(optim_config.grad_clip))
  parts.append(core)
  layer_decay = optim_config.get("layer_decay", 1.0)
  if layer_decay != 1.0 and num_layers:
    parts.append(_scale_by_layer(params, layer_decay, num_layers))
  mults = dict(optim_config.get("lr_mult", None) or {})
  if any(float(v) != 1.0 for k, v in mults.items() if k in params):
    parts.append(_scale_by_network(params, mults))
  return optax.chain(*parts), lr


def _scale_by_network(params, mults: dict) -> optax.GradientTransformation:
  """Multiplies the updates of network `k` (a top-level key of `params`) by `mults[k]` (1 for
  the others): a learning rate per part, e.g. a pretrained encoder slower than a fresh head."""

  def update_fn(updates, state, params=None):
    del params
    return {
      k: jax.tree.map(lambda u, s=float(mults.get(k, 1.0)): u * jnp.asarray(s, u.dtype), v)
      for k, v in updates.items()
    }, state

  del params
  return optax.GradientTransformation(lambda _: optax.EmptyState(), update_fn)


def _scale_by_layer(params, decay: float, num_layers: int) -> optax.GradientTransformation:
  """Multiplies updates of layer i by decay ** (num_layers + 1 - i) (BEiT/DiG layer decay)."""

  def scale(path, _):
    names = tuple(getattr(k, "key", str(k)) for k in path)
    return decay ** (num_layers + 1 - layer_id(names, num_layers))

  scales = jax.tree_util.tree_map_with_path(scale, params)

  def update_fn(updates, state, params=None):
    del params
    return jax.tree.map(lambda u, s: u * jnp.asarray(s, u.dtype), updates, scales), state

  return optax.GradientTransformation(lambda _: optax.EmptyState(), update_fn)

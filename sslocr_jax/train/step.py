"""The one train step: every phase's loss, gradient and optimizer update, then `after_update`.

    train_step(state: TrainState, batch: {name: [B, ...]}) -> (state, metrics {name: scalar})

Phases run in order inside one jitted function (SimAN: generator, then discriminator, each
with its own optimizer); networks outside a phase are constants for it (frozen).

Gradient accumulation (`config.grad_accum_steps = k`, default 1): each phase's gradient is the
mean of the gradients of k micro-batches of B/k examples, computed one after the other by a
`lax.scan` inside the same jitted step (activation memory of B/k examples), followed by one
optimizer update. Micro-batch j holds the examples j, j+k, j+2k, ... of the global batch, so
when each device's share B/n is divisible by k, every micro-batch stays spread over all
devices with no data movement (`batch_size` should be divisible by k x the device count).

For a loss that is a mean of per-example terms (MIM reconstruction with a fixed number of
masked patches per image, CE of a recognizer with per-example normalisation) the result equals
the full-batch step up to float summation order. For a loss that couples examples it does not:
contrastive negatives and BatchNorm statistics are then those of each micro-batch of B/k
examples (the running BatchNorm statistics are updated k times per step), as in PyTorch's
accumulation. That is the standard trade-off of accumulation; keep k = 1 where memory allows.
Each micro-batch gets its own rng (`fold_in(phase_rng, j)`); metrics are micro-batch means.

FSDP: with `gather_shardings` (train/sharding.py `gathered`, given by the loop when the mesh
has fsdp > 1) the params, stored sharded, are constrained to their gathered shardings where the
loss uses them: XLA all-gathers each one and reduce-scatters its gradient, and the optimizer
update runs on the shards.
"""

import jax
import jax.numpy as jnp
import optax

from sslocr_jax.train.state import split_trainable


def make_train_step(
  method, config, optimizers: dict, schedules: dict, phases, gather_shardings=None
):
  """Returns the (unjitted) `train_step(state, batch) -> (state, metrics)`.

  `gather_shardings`: {network: tree of NamedSharding} the params are computed with (FSDP).
  """
  accum = int(config.get("grad_accum_steps", 1) or 1)
  if accum < 1:
    raise ValueError(f"config.grad_accum_steps={accum} must be >= 1")

  def train_step(state, batch):
    rng = jax.random.fold_in(state.rng, state.step)
    params, model_state = state.params, state.model_state
    opt_state = dict(state.opt_state)
    metrics = {}
    for i, (phase, keys) in enumerate(phases):
      trainable = split_trainable(params, keys)

      def loss_of(trainable, model_state, batch, rng, params=params, phase=phase):
        full = {**params, **trainable}
        if gather_shardings is not None:
          full = jax.lax.with_sharding_constraint(full, {k: gather_shardings[k] for k in full})
        return method.loss_fn(
          full, model_state, batch, rng, step=state.step, phase=phase, config=config
        )

      grad_fn = jax.value_and_grad(loss_of, has_aux=True)
      phase_rng = jax.random.fold_in(rng, i)
      if accum == 1:
        (loss, (aux, model_state)), grads = grad_fn(trainable, model_state, batch, phase_rng)
      else:
        (loss, (aux, model_state)), grads = accumulate(
          grad_fn, trainable, model_state, batch, phase_rng, accum
        )
      updates, opt_state[phase] = optimizers[phase].update(grads, opt_state[phase], trainable)
      params = {**params, **optax.apply_updates(trainable, updates)}
      prefix = "" if len(phases) == 1 else f"{phase}/"
      metrics[f"{prefix}loss"] = loss
      metrics[f"{prefix}grad_norm"] = optax.tree.norm(grads)
      metrics[f"{prefix}lr"] = schedules[phase](state.step)
      metrics.update(aux)
    model_state = method.after_update(params, model_state, state.step, config)
    if len(phases) > 1 and "loss" not in metrics:
      metrics["loss"] = sum(metrics[f"{p}/loss"] for p, _ in phases[:1])
    metrics = {k: jnp.asarray(v, jnp.float32) for k, v in metrics.items()}
    new_state = state.replace(
      step=state.step + 1, params=params, opt_state=opt_state, model_state=model_state
    )
    return new_state, metrics

  return train_step


def micro_batches(batch: dict, k: int) -> dict:
  """{name: [B, ...]} -> {name: [k, B/k, ...]}; micro-batch j = examples j, j+k, j+2k, ...

  Splitting B as (B/k, k) keeps the batch sharding on the B/k axis (each device's rows stay
  on it), and the scan then slices the unsharded axis of length k.
  """

  def split(x):
    if x.shape[0] % k:
      raise ValueError(f"batch of {x.shape[0]} is not divisible by grad_accum_steps={k}")
    return jnp.swapaxes(x.reshape((x.shape[0] // k, k) + x.shape[1:]), 0, 1)

  return jax.tree.map(split, batch)


def accumulate(grad_fn, trainable, model_state, batch, rng, k: int):
  """Mean loss, metrics and gradients over k micro-batches; model_state threads through them.

  Args:
    grad_fn: `value_and_grad(loss_of, has_aux=True)` with
      `loss_of(trainable, model_state, batch, rng) -> (loss, (metrics, model_state))`.
    batch: {name: [B, ...]}, B divisible by k.
  Returns:
    ((loss, (metrics, model_state)), grads), as `grad_fn` on the full batch would.
  """
  micro = micro_batches(batch, k)
  first = jax.tree.map(lambda x: x[0], micro)
  (_, (aux_shape, _)), _ = jax.eval_shape(grad_fn, trainable, model_state, first, rng)
  zeros = lambda tree: jax.tree.map(lambda x: jnp.zeros(x.shape, jnp.float32), tree)
  init = (
    jnp.zeros((), jnp.float32),
    zeros(aux_shape),
    jax.tree.map(jnp.zeros_like, trainable),
    model_state,
  )

  def body(carry, xs):
    loss_sum, aux_sum, grad_sum, model_state = carry
    j, mb = xs
    (loss, (aux, model_state)), grads = grad_fn(
      trainable, model_state, mb, jax.random.fold_in(rng, j)
    )
    add = lambda a, b: a + b.astype(a.dtype)
    return (
      loss_sum + loss.astype(jnp.float32),
      jax.tree.map(add, aux_sum, aux),
      jax.tree.map(add, grad_sum, grads),
      model_state,
    ), None

  (loss, aux, grads, model_state), _ = jax.lax.scan(body, init, (jnp.arange(k), micro))
  mean = lambda tree: jax.tree.map(lambda x: x / k, tree)
  return (loss / k, (mean(aux), model_state)), mean(grads)

"""The one train step: every phase's loss, gradient and optimizer update, then `after_update`.

    train_step(state: TrainState, batch: {name: [B, ...]}) -> (state, metrics {name: scalar})

Phases run in order inside one jitted function (SimAN: generator, then discriminator, each
with its own optimizer); networks outside a phase are constants for it (frozen).
"""

import jax
import jax.numpy as jnp
import optax

from sslocr_jax.train.state import split_trainable


def make_train_step(method, config, optimizers: dict, schedules: dict, phases):
  """Returns the (unjitted) `train_step(state, batch) -> (state, metrics)`."""

  def train_step(state, batch):
    rng = jax.random.fold_in(state.rng, state.step)
    params, model_state = state.params, state.model_state
    opt_state = dict(state.opt_state)
    metrics = {}
    for i, (phase, keys) in enumerate(phases):
      trainable = split_trainable(params, keys)

      def loss_of(trainable, params=params, model_state=model_state, phase=phase, i=i):
        return method.loss_fn({**params, **trainable}, model_state, batch,
                              jax.random.fold_in(rng, i), step=state.step, phase=phase,
                              config=config)

      (loss, (aux, model_state)), grads = jax.value_and_grad(loss_of, has_aux=True)(trainable)
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
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                              model_state=model_state)
    return new_state, metrics

  return train_step

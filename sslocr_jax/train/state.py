"""The train state pytree and its sharded initialisation (maxtext style).

    TrainState(step: int32 [], params: {network: tree}, opt_state: {phase: optax state},
               model_state: {"batch_stats": ..., "ema": ...}, rng: uint32 [2])

`params` hold every network of a method (top-level keys are network names); `opt_state` one
optimizer state per training phase (`method.phases`); `model_state` whatever is not trained by
gradients (BatchNorm statistics, momentum/EMA copies). The state is built abstractly with
`jax.eval_shape`, its shardings derived from the params' logical axis names, then initialised
under `jit(out_shardings=...)`: no host copy of a large model.
"""

from typing import Any

import flax.linen as nn
from flax import struct
import jax
import jax.numpy as jnp
import numpy as np

from sslocr_jax.train import sharding as sharding_lib


class TrainState(struct.PyTreeNode):
  step: jax.Array
  params: Any
  opt_state: Any
  model_state: Any
  rng: jax.Array


def example_batch(batch_spec: dict, size: int = 2) -> dict:
  """Zeros shaped like a batch (`{name: ShapeDtypeStruct/array}`), with `size` examples."""
  return {k: jnp.zeros((size,) + tuple(v.shape[1:]), v.dtype) for k, v in batch_spec.items()}


def split_trainable(params: dict, keys) -> dict:
  """The trainable networks of one phase."""
  missing = [k for k in keys if k not in params]
  if missing:
    raise ValueError(f"phase trains {missing}, but the model has only {sorted(params)}")
  return {k: params[k] for k in keys}


def init_train_state(method, config, optimizers: dict, phases, batch_spec: dict, mesh, rules):
  """Returns (state, state_shardings), the state initialised directly with its shardings.

  Args:
    method: the method module (`init_variables(config, rng, batch)`).
    optimizers: {phase: optax.GradientTransformation}.
    phases: [(phase, [trainable network keys])].
    batch_spec: {name: array or ShapeDtypeStruct} of one global batch (shapes only are used).
  """
  init_fn, rng, _, shardings = _build(method, config, optimizers, phases, batch_spec, mesh, rules)
  state = jax.jit(init_fn, out_shardings=shardings)(rng)
  return state, shardings


def abstract_train_state(method, config, optimizers: dict, phases, batch_spec: dict, mesh, rules):
  """The state as `ShapeDtypeStruct`s carrying their shardings, allocating nothing.

  For ahead-of-time compilation (`jit(...).lower(abstract, ...)`, e.g. memory analysis of a
  model that would not fit) with the same shardings `init_train_state` gives.
  """
  _, _, abstract, shardings = _build(method, config, optimizers, phases, batch_spec, mesh, rules)
  return jax.tree.map(
    lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), abstract, shardings
  )


def _build(method, config, optimizers, phases, batch_spec, mesh, rules):
  """(init_fn(rng) -> TrainState, rng, abstract state, state shardings)."""
  seed = int(config.seed)

  def init_variables(rng):
    return method.init_variables(config, rng, example_batch(batch_spec))

  def init_fn(rng):
    init_rng, train_rng = jax.random.split(rng)
    variables = nn.unbox(init_variables(init_rng))
    params = variables["params"]
    opt_state = {
      phase: optimizers[phase].init(split_trainable(params, keys)) for phase, keys in phases
    }
    return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      opt_state=opt_state,
      model_state=variables.get("model_state", {}),
      rng=train_rng,
    )

  rng = jax.random.PRNGKey(seed)
  boxed = jax.eval_shape(init_variables, jax.random.split(rng)[0])["params"]
  p_shardings = sharding_lib.param_shardings(boxed, mesh, rules, sharding_lib.fsdp_min_size(config))
  abstract = jax.eval_shape(init_fn, rng)
  shardings = sharding_lib.state_shardings(abstract, p_shardings, mesh)
  shardings = shardings.replace(params=p_shardings)
  return init_fn, rng, abstract, shardings


def count_params(params) -> int:
  return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))

"""Shared test helpers: load a config file by path with a variant."""

import contextlib
import os

import jax

from sslocr_jax import config_utils

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@contextlib.contextmanager
def xla_optimizations(enabled: bool):
  """XLA's backend optimisation on or off while the block compiles (tests/conftest.py turns
  most of it off for the suite: compile time dominates short tests, long runs want it on)."""
  old = jax.config.read("jax_disable_most_optimizations")
  jax.config.update("jax_disable_most_optimizations", not enabled)
  try:
    yield
  finally:
    jax.config.update("jax_disable_most_optimizations", old)


def load_config(name: str, arg: str | None = None):
  """`load_config("dig", "smoke")` == `--config=configs/dig.py:smoke`."""
  path = os.path.join(ROOT, "configs", f"{name}.py")
  return config_utils.load_config(f"{path}:{arg}" if arg else path)


def fill_like(tree, seed: int = 0):
  """Concrete values for abstract (eval_shape) variables without compiling an init: BatchNorm
  scale/var 1, biases/means 0, every other leaf N(0, 0.1) (numpy). On a 2-core CPU a jitted
  flax init spends ~15 s compiling threefry for a few dozen params; tests that only need
  plausible values use this instead."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(seed)

  def value(path, leaf):
    name = getattr(path[-1], "key", "")
    if name in ("scale", "var"):
      return jnp.ones(leaf.shape, leaf.dtype)
    if name in ("bias", "mean"):
      return jnp.zeros(leaf.shape, leaf.dtype)
    return jnp.asarray(rng.normal(0, 0.1, leaf.shape), leaf.dtype)

  return jax.tree_util.tree_map_with_path(value, tree)


def random_state(config, seed: int = 0) -> dict:
  """A state shaped like the method's `init_variables` with random numpy values (BN variances
  positive), from `torch_state.abstract_state` (shapes only: nothing is compiled)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  from sslocr_jax.models import torch_mapping  # pylint: disable=g-import-not-at-top
  from sslocr_jax.train import torch_state  # pylint: disable=g-import-not-at-top

  rng = np.random.default_rng(seed)
  out = {}
  for k, (shape, _) in torch_state.abstract_state(config).items():
    if k.endswith("/var"):
      out[k] = rng.uniform(0.5, 1.5, shape).astype(np.float32)
    elif k.endswith("/scale"):
      out[k] = (1 + 0.2 * rng.normal(size=shape)).astype(np.float32)
    elif k.endswith("/kernel"):  # unit-variance activations: well-conditioned comparisons
      out[k] = (rng.normal(size=shape) / np.sqrt(np.prod(shape[:-1]))).astype(np.float32)
    else:
      out[k] = (0.2 * rng.normal(size=shape)).astype(np.float32)
  return {"params": {}, "model_state": {}, **torch_mapping.unflatten(out)}

"""A method's state <-> a flat PyTorch state dict, for the method named by a config.

Binds the numpy key / layout mapping of models/torch_mapping.py to what the method of
`config.method` declares (docs/interfaces.md): `example_batch(config)` (for the shapes of
its state) and `export_networks(config)` (its networks beyond the encoder, and fixed tables).

    flat = export_state(state, config, include="all")   # {torch name: np.ndarray}
    state = import_state(flat, config, include="all")   # {"params", "model_state"} (numpy)

`config` is the run's resolved config (ConfigDict or dict, as in the workdir's config.json).
"""

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from sslocr_jax.models import torch_mapping
from sslocr_jax.train import registry


def _config(config) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(config) if isinstance(config, dict) else config


def network_specs(config, include: str = "all") -> tuple[list, dict]:
  """([(torch prefix, [jax roots], style)], {torch key: fixed array}) of `include`."""
  config = _config(config)
  enc = torch_mapping.encoder_spec(config)
  if include == "encoder":
    return [enc], {}
  if include != "all":
    raise ValueError(f"include={include!r}; valid: encoder, all")
  method = registry.get_method(config)
  if not hasattr(method, "export_networks"):
    raise ValueError(
      f"export of method {config.method!r} is not supported (it declares no "
      "export_networks); use include='encoder' for its encoder"
    )
  specs, fixed = method.export_networks(config)
  return [enc] + list(specs), dict(fixed)


def abstract_state(config) -> dict:
  """{jax key: (shape, dtype)} of the method's `init_variables` (shapes only, nothing computed)."""
  config = _config(config)
  method = registry.get_method(config)
  batch = method.example_batch(config)
  tree = jax.eval_shape(
    lambda r: nn.unbox(method.init_variables(config, r, batch)), jax.random.key(0)
  )
  return {k: (tuple(v.shape), np.dtype(v.dtype)) for k, v in torch_mapping.flatten(tree).items()}


def export_state(state, config, include: str = "all") -> dict:
  """State tree `{"params", "model_state"}` -> flat `{torch name: np.ndarray}`."""
  specs, fixed = network_specs(config, include)
  return torch_mapping.export_state(state, specs, fixed)


def import_state(flat: dict, config, include: str = "all") -> dict:
  """Flat PyTorch state dict -> `{"params", "model_state"}` numpy trees of `include`.

  Raises torch_mapping.KeyMismatchError naming every missing / unknown key and shape mismatch.
  """
  specs, fixed = network_specs(config, include)
  method = _config(config).get("method", "recognition")
  return torch_mapping.import_state(
    flat, abstract_state(config), specs, fixed, include, what=f"{method} model of the config"
  )


def import_params(flat: dict, config, include: str = "all") -> dict:
  """Like `import_state`, the `params` tree only."""
  return import_state(flat, config, include)["params"]

"""Method modules by name: `config.method` -> `sslocr_jax/methods/<name>.py`.

The one place above the methods that looks a method up; everything else calls the hooks the
module declares (docs/interfaces.md), never branches on the method's name.
"""

import importlib

from sslocr_jax import errors


def get_method(config):
  """The method module of `config.method` (a ConfigDict or dict)."""
  name = config.get("method", "")
  try:
    return importlib.import_module(f"sslocr_jax.methods.{name}")
  except ModuleNotFoundError as e:
    raise errors.UserError(
      f"config.method={name!r} names no module sslocr_jax/methods/{name}.py"
    ) from e

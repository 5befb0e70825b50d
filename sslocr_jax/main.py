r"""Entry point: `python -m sslocr_jax.main --config=configs/<method>.py[:variant] [--workdir=DIR]`.

Dispatches on `config.task`: `pretrain` / `finetune` (the generic loop in train/loop.py) or
`evaluate` (evaluate/benchmarks.py). Any config field is overridable with
`--config.FIELD=VALUE`. Without `--workdir`, a fresh folder under `./runs/` is used.
"""

import datetime
import os
import re
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Config file (path[:variant]).",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Output folder (default: ./runs/<time>).")


def check_overrides(argv, config) -> None:
  """Fails with the list of valid fields when `--config.X=...` names an unknown field."""
  for arg in argv:
    m = re.match(r"--config\.([\w.]+)", arg)
    if not m:
      continue
    node, path = config, m.group(1).split(".")
    for i, key in enumerate(path):
      if not hasattr(node, "keys") or key not in node:
        parent = ".".join(path[:i]) or "config"
        valid = sorted(node.keys()) if hasattr(node, "keys") else []
        raise SystemExit(f"error: unknown config field '{'.'.join(path[:i + 1])}'. "
                         f"Valid fields of {parent}: {', '.join(valid)}")
      node = node[key]


def default_workdir(config) -> str:
  stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
  return os.path.join("runs", f"{config.method}-{stamp}")


def run(config, workdir: str):
  if config.task in ("pretrain", "finetune"):
    from sslocr_jax.train import loop  # pylint: disable=g-import-not-at-top
    return loop.train(config, workdir)
  if config.task == "evaluate":
    from sslocr_jax.evaluate import benchmarks  # pylint: disable=g-import-not-at-top
    return benchmarks.run(config, workdir)
  raise ValueError(f"config.task={config.task!r} is unknown; valid: pretrain, finetune, evaluate")


def main(argv):
  del argv
  config = _CONFIG.value
  workdir = _WORKDIR.value or default_workdir(config)
  if not _WORKDIR.value:
    print(f"workdir: {workdir}", flush=True)
  if config.get("distributed", False):
    import jax  # pylint: disable=g-import-not-at-top
    jax.distributed.initialize()
  run(config, workdir)


def _entry():
  # Validate `--config.FIELD` overrides against the loaded config before absl parses them, so
  # a typo gets the list of valid fields rather than absl's generic "unknown flag".
  argv = sys.argv
  for i, arg in enumerate(argv):
    if arg.startswith("--config=") or (arg == "--config" and i + 1 < len(argv)):
      spec = arg.split("=", 1)[1] if "=" in arg else argv[i + 1]
      path, _, variant = spec.partition(":")
      if os.path.exists(path):
        import importlib.util  # pylint: disable=g-import-not-at-top
        module_spec = importlib.util.spec_from_file_location("_config_check", path)
        module = importlib.util.module_from_spec(module_spec)
        module_spec.loader.exec_module(module)
        check_overrides(argv, module.get_config(variant or None))
  logging.set_verbosity(logging.WARNING)
  app.run(main)


if __name__ == "__main__":
  _entry()

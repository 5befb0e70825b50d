r"""The representation probe on any checkpoints: where a pretraining's curve stands between the
random encoder (the floor) and a supervised one (the ceiling).

    python benchmarks/probe_checkpoints.py --checkpoints=runs/seqclr-cpu,runs/ft-cpu60 \
        [--probe_config=configs/seqclr.py:cpu] [--random] [--probe.steps=300 ...]

A pretraining run's `probe_accuracy` (train/probe.py, docs/probe.md) says whether the curve
rises, not whether the probe could read anything at all: a linear CTC head trained 300 steps
could stay on CTC's blank plateau for every encoder. This runs the same probe (the fields of
`--probe_config`'s `probe` block, so the figures compare with that run's metrics.jsonl) on the
encoder of each checkpoint: pretraining workdirs and fine-tuning workdirs alike (anything
`train/resolve.py` reads; a fine-tuning's `best/`), with the model block each checkpoint's own
config gives, plus (`--random`) that encoder freshly initialised (seed 0). A fine-tuned
encoder's figure is the probe's ceiling: if it reads there, a flat pretraining curve is the
pretraining's, not the probe's. Prints one row per encoder, then one JSON line.
"""

import json
import os
import sys
import types

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from sslocr_jax.methods import common  # noqa: E402
from sslocr_jax.models import encoders  # noqa: E402
from sslocr_jax.train import probe as probe_lib  # noqa: E402
from sslocr_jax.train import resolve  # noqa: E402
from sslocr_jax.train import sharding as sharding_lib  # noqa: E402


def define_flags() -> dict:
  """The command's flags (defined at run time only: the tests import this module beside other
  benchmarks that define `--checkpoints` too)."""
  return {
    "checkpoints": flags.DEFINE_list("checkpoints", [], "workdirs (pretraining or fine-tuning)"),
    "random": flags.DEFINE_bool("random", True, "also probe each encoder freshly initialised"),
    "probe_config": config_flags.DEFINE_config_file(
      "probe_config", "configs/seqclr.py:cpu", "config whose `probe` block is used"
    ),
  }


def probe_config_for(model_config, probe_config):
  """The probe's config: `probe_config` (its probe block, image size) with `model_config`'s
  model block and image width."""
  config = probe_config.copy_and_resolve_references()
  config.model = model_config.model.copy_and_resolve_references()
  config.image_height, config.image_width = model_config.image_height, model_config.image_width
  return config


def random_encoder(config, seed: int = 0):
  """{params, model_state} of `config.model`'s encoder freshly initialised."""
  encoder, _ = encoders.build(config)
  x = jnp.zeros((1, config.image_height, config.image_width, 3), jnp.float32)
  variables = encoder.init(jax.random.PRNGKey(seed), x, train=False)
  stats = variables.get("batch_stats")
  return {"encoder": variables["params"]}, ({"batch_stats": {"encoder": stats}} if stats else {})


def probe(config, params, model_state) -> dict:
  """The probe figures of one encoder (train/probe.Probe on a state holding only it)."""
  mesh = sharding_lib.make_mesh({"data": -1, "fsdp": 1})
  method = types.SimpleNamespace(probe_features=common.encoder_probe_features)
  state = types.SimpleNamespace(params=params, model_state=model_state)
  return probe_lib.Probe(method, config, mesh)(state)


def rows(checkpoints, probe_config, with_random: bool) -> list[dict]:
  out = []
  for path in checkpoints:
    ckpt = resolve.resolve(path)
    config = probe_config_for(ckpt.config, probe_config)
    name = f"{path} ({ckpt.config.get('method')}, step {ckpt.step})"
    out.append({"encoder": name, **probe(config, ckpt.params, ckpt.model_state)})
    if with_random:
      out.append({"encoder": f"{path}: random init", **probe(config, *random_encoder(config))})
  return out


def main(argv, f):
  del argv
  table = rows(f["checkpoints"].value, f["probe_config"].value, f["random"].value)
  pc = f["probe_config"].value.probe
  print(
    f"probe: {pc.train_samples} + {pc.eval_samples} held-out lines, {pc.steps} head steps "
    f"(lr {pc.lr}, batch {pc.batch_size})"
  )
  width = max([20] + [len(r["encoder"]) for r in table])
  print(f"{'encoder':<{width}} {'probe acc. %':>12} {'1-NED %':>8}")
  for r in table:
    print(f"{r['encoder']:<{width}} {r['probe_accuracy']:>12.2f} {r['probe_one_minus_ned']:>8.2f}")
  print(json.dumps({"rows": table}))


if __name__ == "__main__":
  _FLAGS = define_flags()
  app.run(lambda argv: main(argv, _FLAGS))

r"""Recognition throughput per decoder: greedy inference and training images/s.

    python benchmarks/recognition_throughput.py [--config=configs/finetune.py:cpu] \
        [--batch=256] [--train_batch=64] [--decoders=ctc,attention,transformer] [--iters=3]

For each decoder: inference = encoder + greedy decoding (`recognition.predict`, jitted) on a
batch of `--batch` synthetic lines; training = one `train_step` (forward, backward, AdamW) on
`--train_batch`. Weights are freshly initialised, so the autoregressive decoders rarely emit
EOS early: the figures are the worst case of the `lax.while_loop` (all max_len + 1 steps); a
trained model stops when every line of the batch is done.

With torch installed, the same weights are exported (`sslocr_jax.export`) and the PyTorch
module's greedy inference is timed on the same batch, alternating with the JAX calls
(`--torch_threads`, default the CPU count), so the two are side by side in one sitting:
`infer_img_s` (JAX) and `torch_infer_img_s`, ratio `jax_over_torch` (> 1 = JAX faster).

It also checks that greedy transformer decoding compiles once: three calls (synthetic lines,
noise, a short last batch padded to the same size) must leave one entry in the jit cache.
Prints a table, then the figures as one JSON line.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import common  # noqa: E402
from sslocr_jax import config_utils  # noqa: E402
from sslocr_jax.methods import recognition  # noqa: E402
from sslocr_jax.train import evaluation  # noqa: E402
from sslocr_jax.train import loop  # noqa: E402
from sslocr_jax.train import sharding as sharding_lib  # noqa: E402

_CONFIG = flags.DEFINE_string("config", "configs/finetune.py:cpu", "config[:variant]")
_BATCH = flags.DEFINE_integer("batch", 256, "inference batch size")
_TRAIN_BATCH = flags.DEFINE_integer("train_batch", 64, "training batch size")
_DECODERS = flags.DEFINE_list("decoders", ["ctc", "attention", "transformer"], "decoders")
_ITERS = flags.DEFINE_integer("iters", 3, "timed calls (after the compiling one)")
_TORCH = flags.DEFINE_bool("torch", True, "also time the PyTorch export (when torch imports)")
_TORCH_THREADS = flags.DEFINE_integer("torch_threads", 0, "torch threads (0 = CPU count)")


def torch_predictor(config, state):
  """`predict(images uint8 [B, H, W, 3])` of the exported PyTorch module, or None without torch."""
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError:
    return None
  from sslocr_jax.export import cli  # pylint: disable=g-import-not-at-top
  from sslocr_jax.export import torch_modules  # pylint: disable=g-import-not-at-top
  from sslocr_jax.train import torch_state  # pylint: disable=g-import-not-at-top

  torch.set_num_threads(_TORCH_THREADS.value or os.cpu_count())
  flat = torch_state.export_state(
    {"params": state.params, "model_state": state.model_state}, config
  )
  model = torch_modules.build(cli.model_json(config)).eval()
  model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in flat.items()}, strict=True)

  def predict(images):
    x = torch.from_numpy((images.astype(np.float32) / 127.5 - 1.0).transpose(0, 3, 1, 2))
    with torch.no_grad():
      return model(x)

  return predict


def bench_decoder(config, decoder: str, batch: int, train_batch: int, iters: int, images, labels):
  """Figures of one decoder: inference and training images/s, compile time, compilations."""
  config = config.copy_and_resolve_references()
  config.decoder, config.batch_size, config.augment = decoder, train_batch, False
  mesh = sharding_lib.make_mesh(config.mesh)
  s = loop.setup(config, mesh=mesh)
  state = s.state
  cs = recognition.charset_from_config(config)

  # Inference: a fixed-size batch through the jitted greedy predictor.
  predict = evaluation.make_batch_predictor(recognition, config, mesh, batch)
  x = images[:batch]
  t0 = time.perf_counter()
  predict(state.params, state.model_state, x)
  compile_s = time.perf_counter() - t0
  infer_s = common.time_calls(lambda: predict(state.params, state.model_state, x), iters)
  torch_predict = torch_predictor(config, state) if _TORCH.value else None
  torch_s = None
  if torch_predict is not None:  # alternate JAX / torch calls: same load for both
    torch_predict(x)
    pairs = [
      (
        common.time_calls(lambda: predict(state.params, state.model_state, x), 1),
        common.time_calls(lambda: torch_predict(x), 1),
      )
      for _ in range(iters)
    ]
    infer_s = float(np.median([p[0] for p in pairs]))
    torch_s = float(np.median([p[1] for p in pairs]))
  compiles = None
  if decoder == "transformer":  # other contents, then a short batch: still one compilation
    noise = np.random.default_rng(0).integers(0, 256, x.shape, np.uint8)
    predict(state.params, state.model_state, noise)
    predict(state.params, state.model_state, x[: batch // 3])
    compiles = predict.jitted._cache_size()  # pylint: disable=protected-access

  # Training: steps on one fixed batch (the state is donated: keep the returned one).
  ids = np.stack(
    [
      cs.encode(t if cs.check(t, config.max_len) is None else "a", config.max_len)
      for t in labels[:train_batch]
    ]
  )
  tb = sharding_lib.global_batch({"image": images[:train_batch], "label": ids}, mesh)
  step, holder = s.train_step, {"state": state}

  def one_step():
    holder["state"], m = step(holder["state"], tb)
    jax.block_until_ready(m)

  one_step()  # compiles
  train_s = common.time_calls(one_step, iters)
  flops = common.compiled_flops(step, holder["state"], tb)
  return {
    "decoder": decoder,
    "infer_img_s": batch / infer_s,
    "infer_batch_s": infer_s,
    "torch_infer_img_s": batch / torch_s if torch_s else None,
    "jax_over_torch": torch_s / infer_s if torch_s else None,
    "infer_compile_s": compile_s,
    "train_img_s": train_batch / train_s,
    "train_step_s": train_s,
    "train_gflop_img": flops / train_batch / 1e9 if flops else None,
    "compilations": compiles,
  }


def main(argv):
  del argv
  config = config_utils.load_config(_CONFIG.value)
  batch, train_batch = _BATCH.value, _TRAIN_BATCH.value
  images, labels = common.synthetic_lines(
    max(batch, train_batch), config.image_height, config.image_width
  )
  rows = [
    bench_decoder(config, d, batch, train_batch, _ITERS.value, images, labels)
    for d in _DECODERS.value
  ]
  device = f"{jax.device_count()} x {jax.devices()[0].device_kind}"
  print(
    f"{_CONFIG.value}: encoder {config.model.name} {config.model.get('size', '')}, "
    f"inference batch {batch}, training batch {train_batch}, {device}"
  )
  figures = {
    "config": _CONFIG.value,
    "device": device,
    "batch": batch,
    "train_batch": train_batch,
    **{
      f"{r['decoder']}_{k}": round(r[k], 2)
      for r in rows
      for k in ("infer_img_s", "torch_infer_img_s", "jax_over_torch", "train_img_s")
      if r[k] is not None
    },
    "transformer_greedy_compilations": next(
      (r["compilations"] for r in rows if r["decoder"] == "transformer"), None
    ),
  }
  common.print_table([{k: "-" if v is None else v for k, v in r.items()} for r in rows], figures)


if __name__ == "__main__":
  app.run(main)

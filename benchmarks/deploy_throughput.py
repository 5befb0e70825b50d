r"""Predict throughput of one recognizer three ways: JAX, the PyTorch export, ONNX Runtime.

    python benchmarks/deploy_throughput.py [--config=configs/finetune.py:cpu] \
        [--workdir=WORKDIR] [--batch=64] [--images=512] [--decoder=ctc] [--seconds=10]

The same model (the workdir's weights, or freshly initialised ones of `--config` when no
`--workdir` is given; the weights do not change the work of CTC) and the same `--images`
synthetic lines at the model's 32 x 128 go through:
  jax          `predict.Recognizer.recognize` (the jitted batched predictor the predict
               command uses; fixed batch, the last one padded);
  pytorch      the exported `torch_modules` model (`decode`: ids + confidence), no_grad;
  onnxruntime  the `--format=onnx` graph (uint8 images in), CPUExecutionProvider.
Each backend's output is decoded to text with the charset, and the texts of the three are
checked to be equal. Per backend: images/s (best of the timed passes over all images, the
compiling first pass excluded), the CPU cores the process used during those passes
(process CPU time / wall time) and images per CPU-second (less sensitive to other load). The load average before the run is printed: on a shared
machine, compare rows of one run, not runs. Greedy autoregressive decoders: the exported
graphs run all max_len + 1 steps, JAX's while_loop stops when a batch is done (a trained
model stops early; fresh weights rarely emit EOS).
Prints a table, then the figures as one JSON line.
"""

import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app  # noqa: E402
from absl import flags  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import common  # noqa: E402
from sslocr_jax import config_utils  # noqa: E402
from sslocr_jax import predict  # noqa: E402
from sslocr_jax.export import cli  # noqa: E402
from sslocr_jax.methods import recognition  # noqa: E402
from sslocr_jax.train import torch_state  # noqa: E402

_CONFIG = flags.DEFINE_string("config", "configs/finetune.py:cpu", "config[:variant]")
_WORKDIR = flags.DEFINE_string(
  "workdir", "", "fine-tuning workdir (default: fresh weights of --config)"
)
_DECODER = flags.DEFINE_string("decoder", "", "override config.decoder")
_BATCH = flags.DEFINE_integer("batch", 64, "images per call, every backend")
_IMAGES = flags.DEFINE_integer("images", 512, "images per timed pass")
_SECONDS = flags.DEFINE_float("seconds", 10.0, "timed passes per backend until this long")


def timed_passes(fn, seconds: float) -> tuple[float, float, float, int]:
  """(best seconds per pass, CPU cores used, CPU seconds per pass, passes): `fn()` once to
  warm up, then repeatedly for at least 2 passes and `seconds`."""
  fn()
  best, passes, wall0, cpu0 = float("inf"), 0, time.perf_counter(), time.process_time()
  while passes < 2 or time.perf_counter() - wall0 < seconds:
    t = time.perf_counter()
    fn()
    best, passes = min(best, time.perf_counter() - t), passes + 1
  cpu = time.process_time() - cpu0
  return best, cpu / (time.perf_counter() - wall0), cpu / passes, passes


def load_model(config_spec: str, checkpoint: str, decoder: str, batch: int):
  """(config, params, model_state) of the workdir or a fresh init of the config."""
  if checkpoint:
    rec = predict.Recognizer.from_checkpoint(checkpoint, batch_size=batch)
    return rec.config, jax.device_get(rec.params), jax.device_get(rec.model_state)
  config = config_utils.load_config(config_spec)
  if decoder:
    config.decoder = decoder
  x = {"image": np.zeros((2, config.image_height, config.image_width, 3), np.uint8)}
  state = jax.jit(lambda k: recognition.init_variables(config, k, x))(jax.random.key(0))
  return config, state["params"], state["model_state"]


def main(argv):
  del argv
  import onnxruntime as ort  # pylint: disable=g-import-not-at-top
  import torch  # pylint: disable=g-import-not-at-top
  from sslocr_jax.export import onnx_export  # pylint: disable=g-import-not-at-top
  from sslocr_jax.export import torch_modules  # pylint: disable=g-import-not-at-top

  load = os.getloadavg()
  config, params, model_state = load_model(
    _CONFIG.value, _WORKDIR.value, _DECODER.value, _BATCH.value
  )
  b, n = _BATCH.value, _IMAGES.value
  images, _ = common.synthetic_lines(n, config.image_height, config.image_width)
  cs = recognition.charset_from_config(config)
  state = jax.tree.map(np.asarray, {"params": params, "model_state": model_state})
  flat, meta = torch_state.export_state(state, config), cli.model_json(config)

  rec = predict.Recognizer(config, params, model_state, batch_size=b)
  texts, runs = {}, {}

  def run_jax():
    texts["jax"] = rec.recognize(images)[0]

  runs["jax"] = run_jax

  model = torch_modules.build(meta).eval()
  model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in flat.items()})
  front = torch_modules.UInt8Images(model).eval()

  def run_torch():
    out = []
    with torch.no_grad():
      for i in range(0, n, b):
        ids, _ = front(torch.from_numpy(images[i : i + b]))
        out += [cs.decode(r) for r in ids.numpy()]
    texts["pytorch"] = out

  runs["pytorch"] = run_torch

  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, "model.onnx")
    onnx_export.to_onnx(flat, meta, path)
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])

  def run_onnx():
    out = []
    for i in range(0, n, b):
      ids, _ = sess.run(None, {onnx_export.INPUT: images[i : i + b]})
      out += [cs.decode(r) for r in ids]
    texts["onnxruntime"] = out

  runs["onnxruntime"] = run_onnx

  rows = []
  for name, fn in runs.items():
    best, cores, cpu_per_pass, passes = timed_passes(fn, _SECONDS.value)
    rows.append(
      {
        "backend": name,
        "img_s": n / best,
        "batch": b,
        "cpu_cores_used": cores,
        "img_per_cpu_s": n / cpu_per_pass,
        "passes": passes,
      }
    )
  same = texts["jax"] == texts["pytorch"] == texts["onnxruntime"]
  model_desc = (
    f"{_WORKDIR.value or _CONFIG.value}: encoder {config.model.name} "
    f"{config.model.get('size', '')}, decoder {config.decoder}"
  )
  print(
    f"{model_desc}; {n} images, batch {b}; {os.cpu_count()} CPUs, load average "
    f"{load[0]:.2f} before the run; torch {torch.__version__} ({torch.get_num_threads()} "
    f"threads), onnxruntime {ort.__version__}, jax {jax.__version__} "
    f"({jax.devices()[0].device_kind}); same texts: {same}"
  )
  figures = {
    "model": model_desc,
    "batch": b,
    "images": n,
    "cpus": os.cpu_count(),
    "loadavg_1m_before": round(load[0], 2),
    "same_texts": same,
    **{f"{r['backend']}_img_s": round(r["img_s"], 1) for r in rows},
    **{f"{r['backend']}_cpu_cores": round(r["cpu_cores_used"], 2) for r in rows},
    **{f"{r['backend']}_img_per_cpu_s": round(r["img_per_cpu_s"], 1) for r in rows},
  }
  common.print_table(rows, figures)
  if not same:
    raise SystemExit("the backends' texts differ")


if __name__ == "__main__":
  app.run(main)

"""ONNX export of an exported PyTorch model (`python -m sslocr_jax.export --format=onnx`).

The graph is the `torch_modules` model behind a uint8 front (`torch_modules.UInt8Images`):

    images uint8 [B, H, W, 3] (RGB, already at the model's size, e.g. 32 x 128)
      -> recognizer: ids int64 [B, max_len + 1] (charset ids, EOS, then PAD), confidence [B]
      -> encoder (--include=encoder): features float32 [B, N, D]

B is a dynamic axis. Greedy decoding runs a fixed `max_len + 1` steps (no data-dependent
exit) and CTC collapses with CumSum / ScatterElements, so the whole decoder is in the graph;
`Charset.decode` (or `model.json`'s `chars`, below) turns ids into text:
`"".join(chars[i] for i in row[:list(row).index(eos)] if i < len(chars))`.

Needs torch (the exporter) and `onnx`; running the file needs only `onnxruntime`:
`pip install "sslocr_jax[onnx]"`. The traced (TorchScript) exporter is used
(`dynamo=False`), so `onnxscript` is not needed.
"""

import os

import numpy as np

OPSET = 17
INPUT = "images"


def output_names(model_config: dict) -> list[str]:
  if model_config.get("include", "all") == "encoder":
    return ["features"]
  if model_config.get("method") == "recognition":
    return ["ids", "confidence"]
  raise ValueError(
    "--format=onnx exports a recognizer (a fine-tuning checkpoint) or an "
    "encoder (--include=encoder); a whole DiG pretraining model has no "
    "inference graph"
  )


def to_onnx(flat: dict, model_config: dict, output: str, opset: int = OPSET) -> None:
  """Builds the PyTorch model of `model_config`, loads `flat` (strict) and writes `output`."""
  names = output_names(model_config)
  try:
    import torch  # pylint: disable=g-import-not-at-top
    import onnx  # pylint: disable=g-import-not-at-top,unused-import  # noqa: F401
  except ImportError as e:
    raise ImportError("--format=onnx needs torch and onnx: pip install 'sslocr_jax[onnx]'") from e
  from sslocr_jax.export import torch_modules  # pylint: disable=g-import-not-at-top

  model = torch_modules.build(model_config).eval()
  model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in flat.items()}, strict=True)
  front = torch_modules.UInt8Images(model).eval()
  h, w = model_config["image_size"]
  example = torch.zeros((2, h, w, 3), dtype=torch.uint8)
  os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
  # Tracing runs every op once on a tiny example: more threads only add hand-off cost (2-3x
  # slower on a busy 2-core machine).
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  try:
    with torch.no_grad():
      torch.onnx.export(
        front,
        (example,),
        output,
        dynamo=False,
        opset_version=opset,
        input_names=[INPUT],
        output_names=names,
        dynamic_axes={n: {0: "batch"} for n in [INPUT] + names},
      )
  finally:
    torch.set_num_threads(threads)

r"""Export a checkpoint to a PyTorch state dict (+ model JSON); `python -m sslocr_jax.export`.

    python -m sslocr_jax.export --checkpoint=runs/dig-cpu --output=dig.safetensors \
        [--format=safetensors|pt|onnx] [--include=encoder|all]

`--checkpoint` is a workdir, its `checkpoints` folder or one step folder (`.../checkpoints/
500`); the run's `config.json` is found in or above it (train/resolve.py). Writes `FILE` and
`FILE` with the suffix `.json`: the model config `torch_modules.build` reads. `pt` writes
`torch.save({"model": state_dict})` like the official DiG release (needs torch). `onnx`
writes `FILE.onnx` (uint8 images in, ids + confidence out; export/onnx_export.py) and, beside
it, the same weights as `FILE.safetensors` (needs torch and onnx).
"""

import argparse
import json
import os

import ml_collections
import numpy as np

from sslocr_jax import errors
from sslocr_jax.train import registry
from sslocr_jax.train import resolve
from sslocr_jax.train import torch_state


def _plain(x):
  """ConfigDict / tuples -> JSON-able plain values."""
  if hasattr(x, "to_dict"):
    x = x.to_dict()
  if isinstance(x, dict):
    return {k: _plain(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_plain(v) for v in x]
  return x


def model_json(config, include: str = "all") -> dict:
  """The small model config `torch_modules.build` reads (plain JSON values): the common fields
  plus what the method declares (`export_metadata(config)`, docs/interfaces.md)."""
  c = _plain(config)
  out = {
    "format": "sslocr_jax-torch-export/1",
    "method": c.get("method", "recognition"),
    "include": include,
    "image_size": [int(c["image_height"]), int(c["image_width"])],
    "model": c["model"],
    "input": "NCHW float in [-1, 1] (uint8 / 127.5 - 1)",
    "config": c,
  }  # the run's config: train/resolve.py rebuilds the JAX model from it
  config = ml_collections.ConfigDict(c)
  method = registry.get_method(config)
  if hasattr(method, "export_metadata"):
    out.update(_plain(method.export_metadata(config)))
  return out


def json_path(output: str) -> str:
  return os.path.splitext(output)[0] + ".json"


def write(flat: dict, output: str, fmt: str = "safetensors") -> None:
  """Writes the state dict; a path that cannot be written is a UserError naming `output`."""
  try:
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, "ab"):  # writable? (before the libraries write under other names)
      pass
  except OSError as e:
    raise errors.UserError(f"cannot write --output={output}: {e.strerror or e}") from None
  if fmt == "safetensors":
    from safetensors.numpy import save_file  # pylint: disable=g-import-not-at-top

    save_file({k: np.ascontiguousarray(v) for k, v in flat.items()}, output)
  elif fmt == "pt":
    try:
      import torch  # pylint: disable=g-import-not-at-top
    except ImportError as e:
      raise ImportError(
        "--format=pt needs PyTorch (pip install 'sslocr_jax[torch]'); --format=safetensors does not"
      ) from e
    torch.save({"model": {k: torch.from_numpy(np.array(v)) for k, v in flat.items()}}, output)
  else:
    raise ValueError(f"format={fmt!r}; valid: safetensors, pt")


def export_checkpoint(
  checkpoint: str, output: str, fmt: str = "safetensors", include: str = "all"
) -> dict:
  """Writes the state dict and its model JSON; returns the flat state dict."""
  ckpt = resolve.resolve(checkpoint, use_best=False)
  config = ckpt.config
  flat = torch_state.export_state(
    {"params": ckpt.params, "model_state": ckpt.model_state}, config, include
  )
  meta = model_json(config, include)
  if fmt == "onnx":
    from sslocr_jax.export import onnx_export  # pylint: disable=g-import-not-at-top

    write(flat, os.path.splitext(output)[0] + ".safetensors")  # checks the folder too
    onnx_export.to_onnx(flat, meta, output)
  else:
    write(flat, output, fmt)
  try:
    with open(json_path(output), "w") as f:
      json.dump(meta, f, indent=2)
  except OSError as e:
    raise errors.UserError(f"cannot write {json_path(output)}: {e.strerror or e}") from None
  return flat


def main(argv=None):
  p = argparse.ArgumentParser(
    prog="python -m sslocr_jax.export",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  p.add_argument("--checkpoint", required=True, help="workdir, checkpoints folder or step folder")
  p.add_argument("--output", required=True, help="FILE.safetensors, FILE.pth or FILE.onnx")
  p.add_argument(
    "--format",
    default=None,
    choices=("safetensors", "pt", "onnx"),
    help="default: from the suffix of --output (safetensors unless .pt/.pth/.onnx)",
  )
  p.add_argument("--include", default="all", choices=("encoder", "all"))
  p.add_argument(
    "--verbose",
    action="store_true",
    help="show the traceback of a user error (bad path), not only its message",
  )
  a = p.parse_args(argv)
  fmt = a.format or {".pt": "pt", ".pth": "pt", ".onnx": "onnx"}.get(
    os.path.splitext(a.output)[1], "safetensors"
  )
  if fmt == "onnx" and not a.output.endswith(".onnx"):
    a.output = os.path.splitext(a.output)[0] + ".onnx"
  with errors.exit_on_user_error(a.verbose):
    flat = export_checkpoint(a.checkpoint, a.output, fmt, a.include)
  n = sum(int(np.size(v)) for v in flat.values())
  also = f", {os.path.splitext(a.output)[0]}.safetensors" if fmt == "onnx" else ""
  print(
    f"wrote {a.output} ({len(flat)} tensors, {n / 1e6:.2f}M values){also} and {json_path(a.output)}"
  )


if __name__ == "__main__":
  main()

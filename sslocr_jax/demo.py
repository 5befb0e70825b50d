r"""A small web demo: upload or paste a word image, read the text and its confidence.

    python -m sslocr_jax.demo --checkpoint=runs/ft-cpu [--pretrained=runs/dig-cpu] \
        [--host=127.0.0.1] [--port=7860] [--batch_size=16]

`--checkpoint` is any checkpoint the project loads (train/resolve.py: a fine-tuning workdir
or step folder, an exported `.safetensors` with its `.json`; a pretraining workdir shows only
its view). With a DiG pretraining checkpoint (given as
`--checkpoint`, as `--pretrained`, or found as the fine-tuning run's `init_from`), the page
also shows the masked-reconstruction view of the image: original | masked (the mask-ratio
slider) | SimMIM reconstruction | augmented view, the grid `dig.visualize` writes during
training. Needs gradio: `pip install "sslocr_jax[demo]"`. The page opens on a rendered
synthetic line, already recognized (computed at start-up).

Endpoints (for `gradio_client`, or any HTTP client):
  /recognize        image -> (text, confidence)
  /recognize_files  list of image files -> rows [file, text, confidence] (one batched call)
  /reconstruct      image, mask ratio, seed -> the view grid (PNG)
"""

import argparse
import os

from absl import logging
import jax
import numpy as np

from sslocr_jax import predict
from sslocr_jax.data import augment
from sslocr_jax.data import images as images_lib
from sslocr_jax.data import sources
from sslocr_jax.train import registry
from sslocr_jax.train import resolve


class PretrainView:
  """A pretraining method's `visualize` grid for one user image (DiG: masked reconstruction).

  `__call__(image uint8 [H, W, 3], mask_ratio, seed) -> uint8 grid`: the method's training
  views of the image (`make_views`, with the given mask ratio and rng seed), one row.
  """

  def __init__(self, config, params, model_state):
    self.config, self.params, self.model_state = config, params, model_state
    self.method = registry.get_method(config)
    if not hasattr(self.method, "visualize"):
      raise ValueError(f"method {config.method!r} has no visualize()")
    self._visualize = jax.jit(
      lambda p, s, b: self.method.visualize(p, s, b, None, self.config, num_images=1)
    )

  @property
  def mask_ratio(self) -> float | None:
    return self.config.get("mask_ratio", None)

  def __call__(self, image, mask_ratio=None, seed: int = 0) -> np.ndarray:
    config = self.config
    if mask_ratio is not None and "mask_ratio" in config:
      config = config.copy_and_resolve_references()
      config.mask_ratio = float(mask_ratio)
    image = augment.to_rgb_uint8(np.asarray(image))
    views = self.method.make_views(
      {"image": image, "label": ""}, np.random.default_rng(int(seed)), config
    )
    batch = {k: np.asarray(v)[None] for k, v in views.items()}
    grids = self._visualize(self.params, self.model_state, batch)
    return np.asarray(next(iter(grids.values())))


def load(path: str):
  """(config, params, model_state) of any checkpoint the project loads (train/resolve.py)."""
  ckpt = resolve.resolve(path)
  if ckpt.config is None:
    raise ValueError(f"{path}: no config describes this model (an official .pth needs one)")
  return ckpt.config, ckpt.params, ckpt.model_state


def load_models(checkpoint: str, pretrained: str = "", batch_size: int = 16):
  """(predict.Recognizer or None, PretrainView or None) for the demo's checkpoints."""
  config, params, model_state = load(checkpoint)
  recognizer = view = None
  if config.get("method") == "recognition":
    recognizer = predict.Recognizer(config, params, model_state, batch_size=batch_size)
    pretrained = pretrained or config.get("init_from", "")
    if pretrained and not os.path.exists(pretrained):
      logging.warning("init_from %s is not here: no reconstruction view", pretrained)
      pretrained = ""
  else:
    view = PretrainView(config, params, model_state)
  if pretrained and view is None:
    pc, pp, pm = load(pretrained)
    if pc.get("method") != "dig":
      logging.warning(
        "%s is a %s checkpoint, not DiG: no reconstruction view", pretrained, pc.get("method")
      )
    else:
      view = PretrainView(pc, pp, pm)
  return recognizer, view


def example_image() -> np.ndarray:
  """A rendered synthetic line (a dictionary word; no download)."""
  return sources.SyntheticSource(1, seed=7, word_prob=1.0)[0]["image"]


def build(recognizer=None, view=None, example=None):
  """The gradio Blocks app (not launched)."""
  import gradio as gr  # pylint: disable=g-import-not-at-top

  def recognize(image):
    if image is None:
      return "", None
    ((text, conf),) = recognizer([image])
    return text, round(float(conf), 4)

  def recognize_files(files):
    rows, images, names = [], [], []  # unreadable files first
    for f in files or []:
      path = f if isinstance(f, str) else getattr(f, "name", str(f))
      try:
        images.append(images_lib.read(path))
        names.append(os.path.basename(path))
      except (images_lib.DecodeError, OSError) as e:  # as the predict command reports them
        rows.append([os.path.basename(path), f"(unreadable image: {e})", None])
    rows += [[n, t, round(float(c), 4)] for n, (t, c) in zip(names, recognizer(images))]
    return rows

  def reconstruct(image, mask_ratio, seed):
    return None if image is None else view(image, mask_ratio, int(seed or 0))

  # The example's results are computed here and shown as the outputs' first values, so the
  # page needs no request to show them (and a static screenshot of it shows them too).
  first_text, first_conf = recognize(example) if recognizer and example is not None else ("", None)
  ratio0 = view.mask_ratio if view is not None and view.mask_ratio is not None else 0.7
  first_grid = reconstruct(example, ratio0, 0) if view is not None else None

  with gr.Blocks(title="sslocr_jax demo", analytics_enabled=False) as demo:
    gr.Markdown(
      "## sslocr_jax: text recognition demo\nUpload, paste or drop a cropped word or line image."
    )
    with gr.Row():
      image = gr.Image(
        label="image",
        type="numpy",
        image_mode="RGB",
        sources=["upload", "clipboard"],
        value=example,
        height=160,
      )
      with gr.Column():
        text = gr.Textbox(label="text", value=first_text, visible=recognizer is not None)
        conf = gr.Number(
          label="confidence", value=first_conf, precision=4, visible=recognizer is not None
        )
    run = gr.Button("Recognize", variant="primary")
    if view is not None:
      with gr.Row():
        ratio = gr.Slider(
          0.0,
          0.95,
          value=ratio0,
          step=0.05,
          label="mask ratio",
          visible=view.mask_ratio is not None,
        )
        seed = gr.Number(value=0, precision=0, label="mask seed")
      grid = gr.Image(
        label="original | masked | reconstruction | augmented view",
        value=first_grid,
        type="numpy",
        format="png",
        interactive=False,
        height=150,
      )
      run.click(reconstruct, [image, ratio, seed], grid, api_name="reconstruct")
      image.upload(reconstruct, [image, ratio, seed], grid, api_name=False)
    if recognizer is not None:
      run.click(recognize, image, [text, conf], api_name="recognize")
      image.upload(recognize, image, [text, conf], api_name=False)
      with gr.Accordion("Several images", open=False):
        files = gr.File(label="image files", file_count="multiple", type="filepath")
        table = gr.Dataframe(headers=["file", "text", "confidence"], interactive=False)
        go = gr.Button("Recognize all")
        go.click(recognize_files, files, table, api_name="recognize_files")
  return demo


def serve(
  checkpoint: str,
  pretrained: str = "",
  host: str = "127.0.0.1",
  port: int = 7860,
  batch_size: int = 16,
  block: bool = True,
  example: bool = True,
):
  """Loads the models, builds and launches the app; returns it (when `block` is False)."""
  recognizer, view = load_models(checkpoint, pretrained, batch_size)
  demo = build(recognizer, view, example_image() if example else None)
  demo.queue().launch(
    server_name=host,
    server_port=port,
    prevent_thread_lock=not block,
    show_error=True,
    quiet=not block,
  )
  return demo


def main(argv=None):
  p = argparse.ArgumentParser(
    prog="python -m sslocr_jax.demo",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  p.add_argument("--checkpoint", required=True, help="a fine-tuning (or DiG) checkpoint")
  p.add_argument(
    "--pretrained",
    default="",
    help="DiG pretraining checkpoint for the "
    "reconstruction view (default: the fine-tuning run's init_from)",
  )
  p.add_argument("--host", default="127.0.0.1", help="address to serve on (0.0.0.0: all)")
  p.add_argument("--port", type=int, default=7860)
  p.add_argument("--batch_size", type=int, default=16, help="recognition batch (padded)")
  a = p.parse_args(argv)
  os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
  serve(a.checkpoint, a.pretrained, a.host, a.port, a.batch_size)


if __name__ == "__main__":
  main()

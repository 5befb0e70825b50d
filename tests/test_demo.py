"""The web demo (issue 15, Deploy) over real HTTP: a live local gradio server on a smoke
fine-tuning checkpoint whose `init_from` is a smoke DiG checkpoint, queried with
gradio_client; answers equal the models' own outputs."""

import os
import socket

import numpy as np
import pytest

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
gr = pytest.importorskip("gradio")
gradio_client = pytest.importorskip("gradio_client")

import cv2  # noqa: E402
import jax  # noqa: E402

from sslocr_jax import demo as demo_lib  # noqa: E402
from sslocr_jax import predict  # noqa: E402
from sslocr_jax.methods import dig  # noqa: E402
from sslocr_jax.train import checkpoint as ckpt_lib  # noqa: E402
from tests.helpers import load_config  # noqa: E402
from tests.helpers import random_state  # noqa: E402


def _save(workdir, config, state):
  ck = ckpt_lib.Checkpointer(str(workdir / "checkpoints"), async_save=False)
  ck.save(4, {"params": state["params"], "model_state": state["model_state"]})
  ck.close()
  (workdir / "config.json").write_text(config.to_json())


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _write_rgb(path, image):
  cv2.imwrite(str(path), np.ascontiguousarray(image[..., ::-1]))  # cv2 writes BGR
  return str(path)


def test_demo_over_http(tmp_path):
  dig_config = load_config("dig", "smoke")
  dig_state = random_state(dig_config)
  ft_config = load_config("finetune", "smoke,decoder=ctc")
  ft_state = random_state(ft_config)
  ft_config.init_from = str(tmp_path / "dig")  # the reconstruction view comes from here
  _save(tmp_path / "dig", dig_config, dig_state)
  _save(tmp_path / "ft", ft_config, ft_state)

  rng = np.random.default_rng(0)  # two word-sized images of flat colour blocks, one not
  blocks = [rng.integers(0, 256, (1, 8, 3)).astype(np.uint8) for _ in range(2)]
  images = [np.repeat(np.repeat(b, 40, 0), 20, 1) for b in blocks]  # 40 x 160, resized
  paths = [_write_rgb(tmp_path / f"word{i}.png", im) for i, im in enumerate(images)]
  bad = tmp_path / "broken.png"
  bad.write_bytes(b"not an image")
  expected = predict.Recognizer(
    ft_config, ft_state["params"], ft_state["model_state"], batch_size=16
  )(images)

  app = demo_lib.serve(str(tmp_path / "ft"), port=_free_port(), block=False)
  try:
    client = gradio_client.Client(app.local_url, verbose=False)
    assert set(client.view_api(print_info=False, return_format="dict")["named_endpoints"]) == {
      "/recognize",
      "/recognize_files",
      "/reconstruct",
    }
    text, conf = client.predict(gradio_client.handle_file(paths[0]), api_name="/recognize")
    assert text == expected[0][0] and conf == pytest.approx(expected[0][1], abs=1e-4)
    table = client.predict(
      [gradio_client.handle_file(p) for p in (paths[0], str(bad), paths[1])],
      api_name="/recognize_files",
    )
    assert table["data"][0][0] == "broken.png" and table["data"][0][2] is None
    assert table["data"][0][1].startswith("(unreadable image: ")
    assert table["data"][1:] == [
      ["word0.png", expected[0][0], round(expected[0][1], 4)],
      ["word1.png", expected[1][0], round(expected[1][1], 4)],
    ]
    grid_path = client.predict(gradio_client.handle_file(paths[1]), 0.5, 3, api_name="/reconstruct")
    grid = cv2.cvtColor(cv2.imread(grid_path), cv2.COLOR_BGR2RGB)
  finally:
    app.close()
  # The same grid straight from the method: its views of the image (mask ratio 0.5, seed 3).
  dig_config.mask_ratio = 0.5
  views = dig.make_views({"image": images[1], "label": ""}, np.random.default_rng(3), dig_config)
  ref = dig.visualize(
    dig_state["params"],
    dig_state["model_state"],
    jax.tree.map(lambda v: np.asarray(v)[None], views),
    None,
    dig_config,
    num_images=1,
  )["dig_reconstruction"]
  assert grid.shape == ref.shape and np.array_equal(grid, np.asarray(ref))
  assert 0.4 < views["mask"].mean() < 0.6


def test_demo_needs_a_checkpoint(capsys):
  with pytest.raises(SystemExit) as e:
    demo_lib.main([])
  assert e.value.code == 2 and "--checkpoint" in capsys.readouterr().err

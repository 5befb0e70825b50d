"""ONNX export and the torch-only path (issue 15, Deploy): the fixed-length graph gives JAX's
words and confidences under onnxruntime for CTC, attention and transformer decoders, and
the exported PyTorch model loads and runs in a process where JAX cannot be imported."""

import functools
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from sslocr_jax.export import cli  # noqa: E402
from sslocr_jax.export import onnx_export  # noqa: E402
from sslocr_jax.export import torch_modules  # noqa: E402
from sslocr_jax.methods import recognition  # noqa: E402
from sslocr_jax.models import decoders  # noqa: E402
from sslocr_jax.train import torch_state  # noqa: E402
from tests.helpers import ROOT, load_config, random_state  # noqa: E402

MAX_LEN = 8  # 9 greedy steps: a small graph; the random models below fill it on some rows


def _block_images(n, seed=0):
  """uint8 [n, 32, 128, 3]: 8 flat blocks of random colour per image. Random-noise images
  give a random encoder the same frame everywhere (one repeated class); blocks give varied
  words, some longer than MAX_LEN (the cut-off path)."""
  blocks = np.random.default_rng(seed).integers(0, 256, (n, 1, 8, 3)).astype(np.uint8)
  return np.repeat(np.repeat(blocks, 32, 1), 16, 2)


def _model(decoder):
  config = load_config("finetune", f"smoke,decoder={decoder}")
  config.max_len = MAX_LEN
  state = random_state(config)
  return config, state, torch_state.export_state(state, config), cli.model_json(config)


def _jax_predict(config, state, images):
  fn = jax.jit(lambda p, s, x: recognition.predict(p, s, x, config))
  ids, conf = fn(state["params"], state["model_state"], jnp.asarray(images))
  return np.asarray(ids), np.asarray(conf)


def test_ctc_collapse_is_ctc_greedy():
  """Repeats merge, blanks and EOS frames separate, text past `length` is cut (no EOS)."""
  chars, eos, pad = 3, 3, 4  # ids 0..2 characters, 3 EOS, 4 PAD = blank
  paths = [
    [0, 0, 4, 0, 1, 1, 4, 4, 2, 2],  # -> 0 0 1 2 EOS
    [3, 1, 3, 1, 4, 4, 4, 4, 4, 4],  # EOS frames act as blanks -> 1 1 EOS
    [0, 1, 0, 1, 0, 1, 0, 1, 0, 1],  # 10 characters, length 5 -> 0 1 0 1 0
    [4] * 10,
  ]  # nothing -> EOS
  logits = np.full((4, 10, chars + 2), -3.0, np.float32)
  for b, path in enumerate(paths):
    logits[b, np.arange(10), path] = 2.0 + 0.1 * b
  expected = [[0, 0, 1, 2, eos], [1, 1, eos, pad, pad], [0, 1, 0, 1, 0], [eos, pad, pad, pad, pad]]
  ids_t, conf_t = torch_modules.ctc_collapse(
    torch.from_numpy(logits), blank=pad, eos=eos, pad=pad, length=5
  )
  ids_j, conf_j = jax.jit(
    functools.partial(decoders.ctc_greedy, blank=pad, eos=eos, pad=pad, length=5)
  )(logits)
  assert ids_t.tolist() == expected == np.asarray(ids_j).tolist()
  np.testing.assert_allclose(conf_t.numpy(), np.asarray(conf_j), rtol=1e-6)


@pytest.mark.parametrize("decoder", ["ctc", "attention", "transformer"])
def test_onnx_graph_gives_jax_words_and_confidence(tmp_path, decoder):
  config, state, flat, meta = _model(decoder)
  path = str(tmp_path / "model.onnx")
  onnx_export.to_onnx(flat, meta, path)
  graph = onnx.load(path).graph
  ops = {n.op_type for n in graph.node}
  assert not ops & {"Loop", "If", "Scan"}, ops  # fixed length: nothing data-dependent
  assert [i.name for i in graph.input] == ["images"]
  assert [o.name for o in graph.output] == ["ids", "confidence"]
  images = _block_images(5)  # the graph was traced with a batch of 2: B is dynamic
  sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
  ids_o, conf_o = sess.run(None, {"images": images})
  ids_j, conf_j = _jax_predict(config, state, images)
  cs = recognition.charset_from_config(config)
  words = [cs.decode(r) for r in ids_j]
  assert ids_o.shape == (5, MAX_LEN + 1) and np.array_equal(ids_o, ids_j), (ids_o, ids_j)
  assert [cs.decode(r) for r in ids_o] == words
  assert len(set(words)) > 1, words  # a meaningful comparison, not one repeated class
  np.testing.assert_allclose(conf_o, conf_j, rtol=2e-4)
  if decoder == "ctc":  # the encoder-only graph: features
    enc_path = str(tmp_path / "encoder.onnx")
    enc_meta = cli.model_json(config, "encoder")
    onnx_export.to_onnx(torch_state.export_state(state, config, "encoder"), enc_meta, enc_path)
    (feats,) = ort.InferenceSession(enc_path, providers=["CPUExecutionProvider"]).run(
      None, {"images": images}
    )
    ref, _ = jax.jit(lambda p, s, x: recognition.encode(p, s, x, config, train=False))(
      state["params"], state["model_state"], jnp.asarray(images)
    )
    np.testing.assert_allclose(feats, np.asarray(ref), atol=1e-4)
    with pytest.raises(ValueError, match="include=encoder"):
      onnx_export.output_names({"method": "dig", "include": "all"})


# Runs in a fresh interpreter where importing jax, flax, optax, orbax or ml_collections fails.
TORCH_ONLY = textwrap.dedent("""
    import importlib.abc, json, sys
    BLOCKED = ("jax", "jaxlib", "flax", "optax", "orbax", "ml_collections", "chex")
    class Block(importlib.abc.MetaPathFinder):
      def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
          raise ImportError("blocked in this test: " + name)
    sys.meta_path.insert(0, Block())
    import numpy as np, torch
    from safetensors.torch import load_file
    from sslocr_jax.export import torch_modules
    meta = json.load(open(sys.argv[1]))
    model = torch_modules.build(meta).eval()
    model.load_state_dict(load_file(sys.argv[2]), strict=True)
    images = np.load(sys.argv[3])
    with torch.no_grad():
      ids, conf, _ = model.decode(torch.from_numpy(images).permute(0, 3, 1, 2) / 127.5 - 1)
    chars, eos = meta["chars"], meta["eos"]
    words = ["".join(chars[i] for i in (r[:r.index(eos)] if eos in r else r) if i < len(chars))
             for r in ids.tolist()]
    print(json.dumps({"words": words, "ids": ids.tolist(), "confidence": conf.tolist(),
                      "jax_loaded": sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)}))
""")


def test_cli_onnx_and_torch_only_process(tmp_path):
  """`--format=onnx` on a workdir writes .onnx + .safetensors + .json; the PyTorch model of
  those files runs in a process that cannot import JAX and gives JAX's words."""
  from sslocr_jax.train import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top

  config, state, _, _ = _model("ctc")
  workdir = tmp_path / "ft"
  ck = ckpt_lib.Checkpointer(str(workdir / "checkpoints"), async_save=False)
  ck.save(4, {"params": state["params"], "model_state": state["model_state"]})
  ck.close()
  (workdir / "config.json").write_text(config.to_json())
  out = tmp_path / "out" / "model"
  cli.main([f"--checkpoint={workdir}", f"--output={out}", "--format=onnx"])
  files = sorted(p.name for p in (tmp_path / "out").iterdir())
  assert files == ["model.json", "model.onnx", "model.safetensors"]
  images = _block_images(5)  # as in the ctc case above: its compiled predict is reused
  np.save(tmp_path / "images.npy", images)
  ids_j, conf_j = _jax_predict(config, state, images)
  env = {**os.environ, "PYTHONPATH": ROOT}
  proc = subprocess.run(
    [
      sys.executable,
      "-c",
      TORCH_ONLY,
      str(out) + ".json",
      str(out) + ".safetensors",
      str(tmp_path / "images.npy"),
    ],
    capture_output=True,
    text=True,
    env=env,
    timeout=120,
    check=False,
  )
  assert proc.returncode == 0, proc.stderr[-3000:]
  got = json.loads(proc.stdout.strip().splitlines()[-1])
  assert got["jax_loaded"] == []
  cs = recognition.charset_from_config(config)
  assert got["words"] == [cs.decode(r) for r in ids_j]
  assert np.array_equal(np.array(got["ids"]), ids_j)
  np.testing.assert_allclose(got["confidence"], conf_j, rtol=2e-4)
  sess = ort.InferenceSession(str(out) + ".onnx", providers=["CPUExecutionProvider"])
  assert np.array_equal(sess.run(None, {"images": images})[0], ids_j)

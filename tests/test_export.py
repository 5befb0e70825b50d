"""PyTorch export / import (issue 7): strict loads, JAX == PyTorch outputs, exact round trips,
official-layout imports and key-mismatch errors. Tiny models (the smoke configs)."""

import json
import os

import pytest

torch = pytest.importorskip("torch")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from sslocr_jax import posembed  # noqa: E402
from sslocr_jax.export import cli  # noqa: E402
from sslocr_jax.export import torch_modules  # noqa: E402
from sslocr_jax.methods import common  # noqa: E402
from sslocr_jax.methods import dig  # noqa: E402
from sslocr_jax.methods import recognition  # noqa: E402
from sslocr_jax.models import torch_mapping  # noqa: E402
from sslocr_jax.train import resolve  # noqa: E402
from sslocr_jax.train import torch_state  # noqa: E402
from tests.helpers import load_config  # noqa: E402
from tests.helpers import random_state  # noqa: E402

TOL = 1e-4
MAX_DIFFS = {}
STRINGS = {}  # name -> measured max |JAX - PyTorch| (printed by the last test)


def _random_state(config, method, seed=0):
  del method  # the config's method
  return random_state(config, seed)


def _images(config, b=3, seed=1):
  return np.random.default_rng(seed).integers(
    0, 256, (b, config.image_height, config.image_width, 3), dtype=np.uint8
  )


def _to_torch_images(images):
  return torch.from_numpy((images.astype(np.float32) / 127.5 - 1.0).transpose(0, 3, 1, 2))


def _load(flat, cfg_json):
  model = torch_modules.build(cfg_json).eval()
  model.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in flat.items()}, strict=True)
  return model


def _diff(name, a, b):
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  d = float(np.max(np.abs(a - b)))
  prev = MAX_DIFFS.get(name, (0.0, 0.0))
  MAX_DIFFS[name] = (max(d, prev[0]), max(float(np.max(np.abs(a))), prev[1]))
  assert d <= TOL, f"{name}: max |JAX - PyTorch| = {d}"
  return d


def _bits_equal(a, b):
  fa, fb = torch_mapping.flatten(a), torch_mapping.flatten(b)
  assert fa.keys() == fb.keys(), sorted(set(fa) ^ set(fb))
  for k in fa:
    x, y = np.asarray(fa[k]), np.asarray(fb[k])
    assert x.dtype == y.dtype and x.shape == y.shape, k
    assert np.array_equal(x.view(np.uint8), y.view(np.uint8)), k


def _mlp_apply(net, params, stats, x):
  return net.apply({"params": params, "batch_stats": stats}, jnp.asarray(x), train=False)


# ----------------------------------------------------------------------------- DiG
def _dig_outputs_match(config, state, model, tag):
  """Every DiG network of `state` (JAX) against the PyTorch `model`."""
  nets = dig.networks(config)
  images = _images(config)
  mask = np.random.default_rng(2).random((images.shape[0], 256)) < 0.7
  x = common.normalize(jnp.asarray(images))
  p, ms = state["params"], state["model_state"]
  bs = ms["batch_stats"]
  with torch.no_grad():
    ti, tm = _to_torch_images(images), torch.from_numpy(mask)
    tok = model.encoder(ti, tm).numpy()
    _diff(f"{tag} encoder", nets["encoder"].apply({"params": p["encoder"]}, x, mask), tok)
    _diff(
      f"{tag} momentum_encoder",
      nets["encoder"].apply({"params": ms["ema"]["encoder"]}, x),
      model.momentum_encoder(ti),
    )
    _diff(
      f"{tag} pix_decoder",
      nets["mim_head"].apply({"params": p["mim_head"]}, tok),
      model.pix_decoder(torch.from_numpy(tok)),
    )
    feats = np.random.default_rng(3).normal(size=(6, config.model.embed_dim)).astype(np.float32)
    z = np.random.default_rng(4).normal(size=(6, config.proj_dim)).astype(np.float32)
    tf, tz = torch.from_numpy(feats), torch.from_numpy(z)
    for jname, jparams, jstats, tmod, inp, tinp in [
      ("pix_projector", p["pix_projector"], bs["pix_projector"], model.pix_projector, feats, tf),
      (
        "pix_projector",
        ms["ema"]["pix_projector"],
        bs["pix_projector_m"],
        model.pix_projector_m,
        feats,
        tf,
      ),
      ("projector", p["projector"], bs["projector"], model.encoder_projection_layer, feats, tf),
      (
        "projector",
        ms["ema"]["projector"],
        bs["projector_m"],
        model.momentum_projection_layer,
        feats,
        tf,
      ),
      ("predictor", p["predictor"], bs["predictor"], model.predictor, z, tz),
    ]:
      _diff(
        f"{tag} {jname} heads (eval BN)", _mlp_apply(nets[jname], jparams, jstats, inp), tmod(tinp)
      )


def test_dig_export_strict_load_outputs_and_round_trip():
  config = load_config("dig", "smoke")
  state = _random_state(config, dig)
  flat = torch_state.export_state(state, config)
  assert "encoder.blocks.0.attn.qkv.weight" in flat and "momentum_encoder.mask_token" in flat
  assert flat["encoder.patch_embed.proj.weight"].shape == (config.model.embed_dim, 3, 4, 4)
  assert "predictor.4.running_var" in flat and "pix_decoder.4.bias" in flat
  assert "pix_projector_m.7.num_batches_tracked" in flat
  model = _load(flat, cli.model_json(config))
  _dig_outputs_match(config, state, model, "dig")
  _bits_equal(torch_state.import_state(flat, config), state)
  # encoder only
  enc = torch_state.export_state(state, config, include="encoder")
  assert all(k.startswith("encoder.") for k in enc)
  _load(enc, cli.model_json(config, "encoder"))
  _bits_equal(
    torch_state.import_params(enc, config, include="encoder"),
    {"encoder": state["params"]["encoder"]},
  )


def test_official_dig_layout_pth_imports_and_reproduces_pytorch(tmp_path):
  config = load_config("dig", "smoke")
  torch.manual_seed(0)
  model = torch_modules.build(cli.model_json(config))
  with torch.no_grad():  # random everything, incl. biases, mask token, BN statistics
    for name, t in list(model.state_dict().items()):
      if name.endswith("num_batches_tracked"):
        t.fill_(7)
      elif name.endswith("running_var"):
        t.uniform_(0.5, 1.5)
      else:
        t.normal_(0, 0.2)
  model.eval()
  path = str(tmp_path / "checkpoint-9.pth")
  torch.save({"model": model.state_dict(), "epoch": 9}, path)
  flat = torch_mapping.load_torch_state(path)
  state = torch_state.import_state(flat, config)
  _dig_outputs_match(config, state, model, "official-layout dig")


def test_missing_and_extra_keys_are_named():
  config = load_config("dig", "smoke")
  flat = torch_state.export_state(_random_state(config, dig), config)
  bad = dict(flat)
  del bad["encoder.blocks.0.attn.q_bias"]
  bad["encoder.blocks.0.attn.k_bias"] = flat["encoder.blocks.0.attn.v_bias"]
  bad["head.weight"] = np.zeros((3, 3), np.float32)
  with pytest.raises(torch_mapping.KeyMismatchError) as e:
    torch_state.import_state(bad, config)
  msg = str(e.value)
  assert "encoder.blocks.0.attn.q_bias" in msg and "encoder.blocks.0.attn.k_bias" in msg
  assert "head.weight" in msg and e.value.missing == ["encoder.blocks.0.attn.q_bias"]
  # a stored fixed position table (some releases keep `pos_embed`) is accepted, a learned one not
  table = posembed.sincos_1d(256, config.model.embed_dim)[None].astype(np.float32)
  torch_state.import_state({**flat, "encoder.pos_embed": table}, config)
  with pytest.raises(ValueError, match="encoder.pos_embed"):
    torch_state.import_state({**flat, "encoder.pos_embed": table + 0.1}, config)
  bad = dict(flat)
  bad["encoder.blocks.0.mlp.fc1.weight"] = flat["encoder.blocks.0.mlp.fc1.weight"][:5]
  with pytest.raises(ValueError, match="encoder.blocks.0.mlp.fc1.weight"):
    torch_state.import_state(bad, config)


# ----------------------------------------------------------------------------- recognition
def _recognition_case(arg, official_layout=False, **model_overrides):
  """JAX model -> export -> PyTorch; with `official_layout` the other way round: a PyTorch
  model with random weights -> state dict -> import -> JAX."""
  config = load_config("finetune", arg)
  config.model.update(model_overrides)
  arg += "".join(f",{k}={v}" for k, v in model_overrides.items())
  cfg_json = cli.model_json(config)
  if official_layout:
    torch.manual_seed(0)
    model = torch_modules.build(cfg_json).eval()
    flat = {k: v.numpy() for k, v in model.state_dict().items()}
    state = torch_state.import_state(flat, config)
    arg += " official-layout import"
  else:
    state = _random_state(config, recognition)
    flat = torch_state.export_state(state, config)
    model = _load(flat, cfg_json)
  images = _images(config)
  cs = recognition.charset_from_config(config)
  _, _, decoder = recognition.networks(config)
  encode = jax.jit(lambda p, s, x: recognition.encode(p, s, x, config, train=False)[0])
  features = encode(state["params"], state["model_state"], jnp.asarray(images))
  ti = _to_torch_images(images)
  tag = f"recognition {arg}"
  with torch.no_grad():
    _diff(f"{tag} encoder", features, model.encoder(ti))
    dec_vars = {"params": state["params"]["decoder"]}
    if config.decoder == "ctc":
      _diff(f"{tag} logits", jax.jit(decoder.apply)(dec_vars, features), model.logits(ti))
    else:
      labels = np.random.default_rng(5).integers(0, cs.num_classes, (3, config.max_len + 1))
      inputs = recognition.decoder_inputs(jnp.asarray(labels, jnp.int32), cs.bos)
      _diff(
        f"{tag} logits (teacher forcing)",
        decoder.apply(dec_vars, features, inputs),
        model.logits(ti, torch.from_numpy(np.array(inputs)).long()),
      )
    ids_t, _ = model(ti)
  predict = jax.jit(lambda p, s, x: recognition.predict(p, s, x, config))
  ids_j, _ = predict(state["params"], state["model_state"], jnp.asarray(images))
  strings_j = [cs.decode(r) for r in np.asarray(ids_j)]
  strings_t = [cs.decode(r) for r in ids_t.numpy()]
  assert strings_j == strings_t
  STRINGS[arg] = strings_j
  assert np.array_equal(np.asarray(ids_j), ids_t.numpy())
  if official_layout:
    _bits_equal(
      torch_mapping.unflatten(torch_state.export_state(state, config)),
      torch_mapping.unflatten(flat),
    )
  else:
    _bits_equal(torch_state.import_state(flat, config), state)
  return flat


def test_recognition_transformer_decoder():
  flat = _recognition_case("smoke,decoder=transformer")
  assert flat["decoder.trg_word_emb.weight"].shape[0] == 98
  assert flat["decoder.classifier.weight"].shape[0] == 97
  assert "linear_norm.1.weight" in flat and "decoder.layer_stack.0.slf_attn.w_qs.weight" in flat
  _recognition_case("smoke,decoder=transformer", official_layout=True)


def test_recognition_ctc_and_attention_decoders():
  assert "decoder.classifier.weight" in _recognition_case("smoke,decoder=ctc")
  assert "decoder.cell.gru.weight_ih" in _recognition_case("smoke,decoder=attention")


@pytest.mark.parametrize("center", [False, True])
def test_recognition_official_ctc_head(center):
  """`ctc.head=dig` (DiG's CTCRecModel head) exports as decoder.encoder_norm.* and
  decoder.ctc_classifier.{0,1,3}.*, and the PyTorch logits match, with and without
  `ctc.center_frames`."""
  config = load_config("finetune", "smoke,decoder=ctc")
  config.ctc.head, config.ctc.center_frames = "dig", center
  state = _random_state(config, recognition)
  flat = torch_state.export_state(state, config)
  assert {k for k in flat if k.startswith("decoder.")} == {
    "decoder.encoder_norm.weight",
    "decoder.encoder_norm.bias",
  } | {f"decoder.ctc_classifier.{i}.{w}" for i in (0, 1, 3) for w in ("weight", "bias")}
  model = _load(flat, cli.model_json(config))
  images = _images(config)
  features = recognition.encode(
    state["params"], state["model_state"], jnp.asarray(images), config, train=False
  )[0]
  _, _, decoder = recognition.networks(config)
  with torch.no_grad():
    _diff(
      "ctc head=dig logits",
      decoder.apply({"params": state["params"]["decoder"]}, features),
      model.logits(_to_torch_images(images)),
    )


def test_recognition_resnet_bilstm_encoder():
  flat = _recognition_case("smoke,encoder=resnet,decoder=ctc", tps=True)
  assert "encoder.Transformation.LocalizationNetwork.conv.13.running_var" in flat
  assert "encoder.Transformation.LocalizationNetwork.localization_fc1.0.weight" in flat
  assert "encoder.FeatureExtraction.ConvNet.layer1.0.downsample.1.running_var" in flat
  assert "encoder.SequenceModeling.0.rnn.weight_hh_l0_reverse" in flat


# ----------------------------------------------------------------------------- files and CLI
def test_cli_export_and_recognition_init_from(tmp_path):
  from sslocr_jax.train import checkpoint as ckpt_lib  # pylint: disable=g-import-not-at-top

  config = load_config("dig", "smoke")
  state = _random_state(config, dig)
  workdir = tmp_path / "dig"
  ck = ckpt_lib.Checkpointer(str(workdir / "checkpoints"), async_save=False)
  ck.save(3, {"params": state["params"], "model_state": state["model_state"]})
  ck.close()
  (workdir / "config.json").write_text(config.to_json())
  out = str(tmp_path / "out" / "dig.pth")
  cli.main([f"--checkpoint={workdir}", f"--output={out}"])
  meta = json.loads((tmp_path / "out" / "dig.json").read_text())
  assert meta["method"] == "dig" and meta["include"] == "all"
  assert set(torch.load(out, weights_only=True)) == {"model"}
  flat = torch_mapping.load_torch_state(out)
  _load(flat, meta)
  _bits_equal(torch_state.import_state(flat, config), state)
  enc = str(tmp_path / "out" / "enc.safetensors")
  cli.main([f"--checkpoint={workdir}/checkpoints/3", f"--output={enc}", "--include=encoder"])
  # recognition init_from: a .pth of the whole DiG model (official layout) -> encoder only
  ft = load_config("finetune", "smoke,decoder=ctc")
  ft.init_from = out

  class _State:  # the two fields load_pretrained reads, plus replace()
    def __init__(self, params, model_state):
      self.params, self.model_state = params, model_state

    def replace(self, **kw):
      return _State(kw.get("params", self.params), kw.get("model_state", self.model_state))

  fresh = jax.tree.map(jnp.asarray, _random_state(ft, recognition, seed=1))
  loaded = resolve.load_pretrained(recognition, _State(fresh["params"], fresh["model_state"]), ft)
  _bits_equal(jax.tree.map(np.asarray, loaded.params["encoder"]), state["params"]["encoder"])
  ft.init_from = enc
  loaded = resolve.load_pretrained(recognition, _State(fresh["params"], fresh["model_state"]), ft)
  _bits_equal(jax.tree.map(np.asarray, loaded.params["encoder"]), state["params"]["encoder"])
  # DiG pretraining init_from: the full .pth restores everything, encoder-only the encoders
  config.init_from = out
  fresh = jax.tree.map(jnp.asarray, _random_state(config, dig, seed=1))
  loaded = resolve.load_pretrained(dig, _State(fresh["params"], fresh["model_state"]), config)
  _bits_equal(
    jax.tree.map(np.asarray, {"params": loaded.params, "model_state": loaded.model_state}), state
  )
  config.init_from = enc
  loaded = resolve.load_pretrained(dig, _State(fresh["params"], fresh["model_state"]), config)
  for tree in (loaded.params["encoder"], loaded.model_state["ema"]["encoder"]):
    _bits_equal(jax.tree.map(np.asarray, tree), state["params"]["encoder"])
  _bits_equal(jax.tree.map(np.asarray, loaded.params["predictor"]), fresh["params"]["predictor"])
  # the resolver reads each form of checkpoint alike: workdir (+ its config), step folder,
  # exported file (config from its model JSON), a folder holding one exported pair
  for path, step in ((workdir, 3), (workdir / "checkpoints" / "3", 3), (out, None)):
    ckpt = resolve.resolve(str(path))
    assert (ckpt.config.method, ckpt.step) == ("dig", step), path
    assert ckpt.origin.startswith("method=dig, model (name=vit, size=smoke")
    _bits_equal({"params": ckpt.params, "model_state": ckpt.model_state}, state)
  os.remove(out)
  ckpt = resolve.resolve(str(tmp_path / "out"))  # only enc.safetensors + enc.json left
  assert ckpt.path.endswith("enc.safetensors") and sorted(ckpt.params) == ["encoder"]
  _bits_equal(ckpt.params["encoder"], state["params"]["encoder"])


def test_report_max_diffs():
  print("\nmax |JAX - PyTorch| (float32), and max |JAX output| for scale:")
  for k, (d, scale) in sorted(MAX_DIFFS.items()):
    print(f"  {k:62s} {d:.3g}  (|out| <= {scale:.3g})")
  for k, v in STRINGS.items():
    print(f"  predictions {k}: {v}")

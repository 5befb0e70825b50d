"""Official DiG fine-tuned checkpoints (issue 7): the dig-style transformer decoder
(`config.transformer.style="dig"`, models/decoders.py `DigTransformerDecoder`) against the
PyTorch module with the release's layout (export/torch_modules.py `DigTFDecoder`). Tiny
models (finetune.py:smoke); `pytest -s` prints the measured differences."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

from sslocr_jax.export import cli  # noqa: E402
from sslocr_jax.export import torch_modules  # noqa: E402
from sslocr_jax.methods import recognition  # noqa: E402
from sslocr_jax.models import decoders  # noqa: E402
from sslocr_jax.models import torch_mapping  # noqa: E402
from sslocr_jax.train import torch_state  # noqa: E402
from tests.helpers import load_config  # noqa: E402
from tests.test_export import _bits_equal, _images, _load, _random_state  # noqa: E402
from tests.test_export import _to_torch_images  # noqa: E402

TOL = 1e-4


def _config(num_layers=2):
  config = load_config("evaluate", "smoke,decoder=transformer")
  config.transformer.update(style="dig", num_layers=num_layers, n_position=40)
  return config


def _official_keys(config) -> set:
  """The state-dict keys of the release's RecModel (modeling_pretrain_vit encoder with its
  final norm, linear_norm, models/decoder.py TFDecoder), written out by hand."""
  keys = {
    "encoder.mask_token",
    "encoder.patch_embed.proj.weight",
    "encoder.patch_embed.proj.bias",
    "encoder.norm.weight",
    "encoder.norm.bias",
    "decoder.trg_word_emb.weight",
    "decoder.position_enc.position_table",
    "decoder.layer_norm.weight",
    "decoder.layer_norm.bias",
    "decoder.classifier.weight",
    "decoder.classifier.bias",
  }
  keys |= {f"linear_norm.{i}.{p}" for i in (0, 1) for p in ("weight", "bias")}
  for i in range(config.model.depth):
    b = f"encoder.blocks.{i}."
    keys |= {b + "attn.qkv.weight", b + "attn.q_bias", b + "attn.v_bias"}
    keys |= {
      b + m + p
      for m in ("norm1.", "norm2.", "attn.proj.", "mlp.fc1.", "mlp.fc2.")
      for p in ("weight", "bias")
    }
  for i in range(config.transformer.num_layers):
    b = f"decoder.layer_stack.{i}."
    keys |= {
      f"{b}{a}.{lin}.weight"
      for a in ("self_attn", "enc_attn")
      for lin in ("linear_q", "linear_k", "linear_v", "fc")
    }
    keys |= {
      f"{b}{m}.{p}"
      for m in ("norm1", "norm2", "norm3", "mlp.w_1", "mlp.w_2")
      for p in ("weight", "bias")
    }
  return keys


def _official_model(config, seed=0):
  """A PyTorch model in the official layout with random weights: default init, then random
  LayerNorms, biases and mask token, and a stronger cross-attention (image-dependent words)."""
  torch.manual_seed(seed)
  model = torch_modules.build(cli.model_json(config))
  with torch.no_grad():
    for name, t in model.named_parameters():
      if name.endswith(("bias", "mask_token")):
        t.normal_(0, 0.2)
      elif ".enc_attn.linear_v" in name or ".enc_attn.fc" in name:
        t.mul_(4.0)
    for mod in model.modules():
      if isinstance(mod, torch.nn.LayerNorm):
        mod.weight.copy_(1 + 0.2 * torch.randn_like(mod.weight))
  return model.eval()


def _varied_images(config):
  """Noise, a dark and a bright line (noise alone gives every image the same random word)."""
  images = _images(config)
  images[1] //= 4
  images[2] = 255 - images[2] // 4
  return images


def _compare(config, state, model, tag):
  """JAX (state) vs PyTorch (model): encoder + final norm, teacher-forced logits, greedy ids.
  Returns (max abs differences, strings)."""
  cs = recognition.charset_from_config(config)
  _, _, decoder = recognition.networks(config)
  images = _varied_images(config)
  ti = _to_torch_images(images)
  features, _ = recognition.encode(
    state["params"], state["model_state"], jnp.asarray(images), config, train=False
  )
  dec_vars = {"params": state["params"]["decoder"]}
  labels = np.random.default_rng(5).integers(0, cs.num_classes, (3, config.max_len + 1))
  inputs = recognition.decoder_inputs(jnp.asarray(labels, jnp.int32), cs.bos)
  normed = decoder.apply(dec_vars, features, method=lambda m, f: m.encoder_norm(f))
  logits = decoder.apply(dec_vars, features, inputs)
  with torch.no_grad():
    t_feats = model.encoder(ti).numpy()
    t_logits = model.logits(ti, torch.from_numpy(np.array(inputs)).long()).numpy()
    ids_t, _ = model(ti)
  diffs = {
    "encoder (+ final norm)": float(np.max(np.abs(np.asarray(normed) - t_feats))),
    "logits (teacher forcing)": float(np.max(np.abs(np.asarray(logits) - t_logits))),
  }
  ids_j, _ = jax.jit(lambda p, s, x: recognition.predict(p, s, x, config))(
    state["params"], state["model_state"], jnp.asarray(images)
  )
  strings_j = [cs.decode(r) for r in np.asarray(ids_j)]
  strings_t = [cs.decode(r) for r in ids_t.numpy()]
  for k, d in diffs.items():
    print(
      f"\n{tag}: max |JAX - PyTorch| {k} = {d:.3g} (|out| <= "
      f"{np.max(np.abs(t_logits if 'logits' in k else t_feats)):.3g})"
    )
  print(f"{tag}: greedy JAX {strings_j} / PyTorch {strings_t}")
  assert all(d <= TOL for d in diffs.values()), diffs
  assert strings_j == strings_t
  assert np.array_equal(np.asarray(ids_j), ids_t.numpy())
  return diffs, strings_j


def test_official_finetuned_pth_and_safetensors_import_and_match(tmp_path):
  config = _config()
  model = _official_model(config)
  sd = model.state_dict()
  assert set(sd) == _official_keys(config)
  assert sd["decoder.trg_word_emb.weight"].shape[0] == 98
  assert sd["decoder.classifier.weight"].shape[0] == 97
  assert tuple(sd["decoder.position_enc.position_table"].shape) == (1, 40, 32)
  model.load_state_dict(sd, strict=True)
  # as the release saves it: {"model": ..., "epoch": ...}, DDP "module." prefix
  path = str(tmp_path / "checkpoint-best.pth")
  torch.save({"model": {"module." + k: v for k, v in sd.items()}, "epoch": 9}, path)
  flat = torch_mapping.load_torch_state(path)
  state = torch_state.import_state(flat, config)
  _compare(config, state, model, "official .pth")
  from safetensors.torch import save_file  # pylint: disable=g-import-not-at-top

  st = str(tmp_path / "official.safetensors")
  save_file({k: v.contiguous() for k, v in sd.items()}, st)
  _bits_equal(torch_state.import_state(torch_mapping.load_torch_state(st), config), state)
  # import -> export gives back the official state dict, bit for bit
  out = torch_state.export_state(state, config)
  assert set(out) == set(flat)
  for k, v in flat.items():
    assert out[k].dtype == v.dtype and np.array_equal(out[k].view(np.uint8), v.view(np.uint8)), k
  # init_from (encoder only) accepts the fine-tuned file: its final norm is skipped
  enc = torch_state.import_params(flat, config, include="encoder")
  _bits_equal(enc, {"encoder": state["params"]["encoder"]})


def test_export_strict_load_same_outputs_and_round_trip():
  config = _config()
  state = _random_state(config, recognition)
  flat = torch_state.export_state(state, config)
  assert set(flat) == _official_keys(config)
  model = _load(flat, cli.model_json(config))  # strict=True
  _compare(config, state, model, "JAX -> export")
  _bits_equal(torch_state.import_state(flat, config), state)


def test_missing_extra_and_learned_keys_fail_naming_them():
  config = _config(num_layers=1)
  flat = torch_state.export_state(_random_state(config, recognition), config)
  bad = dict(flat)
  del bad["decoder.layer_stack.0.norm3.bias"]
  bad["decoder.layer_stack.0.self_attn.linear_q.bias"] = np.zeros(32, np.float32)
  bad["decoder.extra.weight"] = np.zeros((2, 2), np.float32)
  with pytest.raises(torch_mapping.KeyMismatchError) as e:
    torch_state.import_state(bad, config)
  msg = str(e.value)
  for k in (
    "decoder.layer_stack.0.norm3.bias",
    "decoder.layer_stack.0.self_attn.linear_q.bias",
    "decoder.extra.weight",
  ):
    assert k in msg, msg
  assert e.value.missing == ["decoder.layer_stack.0.norm3.bias"]
  table = flat["decoder.position_enc.position_table"]
  with pytest.raises(torch_mapping.KeyMismatchError, match="position_enc.position_table"):
    torch_state.import_state({**flat, "decoder.position_enc.position_table": table + 0.1}, config)
  # an NRTR-style (our default) decoder is not a DiG one: every differing key is named
  nrtr = load_config("evaluate", "smoke,decoder=transformer")
  nrtr.transformer.num_layers = 1
  with pytest.raises(torch_mapping.KeyMismatchError) as e:
    torch_state.import_state(
      torch_state.export_state(_random_state(nrtr, recognition), nrtr), config
    )
  assert "decoder.layer_stack.0.slf_attn.w_qs.weight" in str(e.value)
  assert "decoder.layer_stack.0.norm1.weight" in str(e.value)


def test_dig_decoder_causal_and_greedy_matches_teacher_forcing():
  m = decoders.DigTransformerDecoder(
    7, d_model=16, num_layers=2, num_heads=2, mlp_dim=24, dropout_rate=0.1, n_position=12
  )
  rng = np.random.default_rng(0)
  features = jnp.asarray(rng.normal(size=(2, 12, 8)), jnp.float32)
  inputs = jnp.asarray(rng.integers(0, 7, (2, 6)), jnp.int32)
  variables = m.init(jax.random.key(0), features, inputs)
  base = np.asarray(m.apply(variables, features, inputs))
  for t in range(6):
    changed = inputs.at[:, t].set((inputs[:, t] + 3) % 7)
    out = np.asarray(m.apply(variables, features, changed))
    np.testing.assert_allclose(out[:, :t], base[:, :t], atol=1e-6)
    assert np.max(np.abs(out[:, t:] - base[:, t:])) > 1e-3
  ids, conf = decoders.greedy_decode(m, variables, features, length=6, bos=7, eos=5, pad=6)
  tf_inputs = jnp.concatenate([jnp.full((2, 1), 7, jnp.int32), ids[:, :-1]], 1)
  tf = np.asarray(m.apply(variables, features, tf_inputs))
  done = np.cumsum(np.asarray(ids) == 5, axis=1) - (np.asarray(ids) == 5) > 0  # after EOS
  assert np.array_equal(np.where(done, -1, tf.argmax(-1)), np.where(done, -1, np.asarray(ids)))
  assert np.all((np.asarray(conf) > 0) & (np.asarray(conf) <= 1))
  with pytest.raises(ValueError, match="n_position"):
    decoders.greedy_decode(m, variables, features, length=13, bos=7, eos=5, pad=6)


def test_predict_recognizer_reads_an_official_file(tmp_path):
  from sslocr_jax import predict  # pylint: disable=g-import-not-at-top

  config = _config(num_layers=1)
  model = _official_model(config, seed=3)
  path = str(tmp_path / "official.pth")
  torch.save({"model": model.state_dict()}, path)
  with pytest.raises(ValueError, match="config"):
    predict.Recognizer.from_checkpoint(path)
  rec = predict.Recognizer.from_checkpoint(path, config=config, batch_size=4)
  images = _varied_images(config)
  with torch.no_grad():
    ids_t, _ = model(_to_torch_images(images))
  assert [t for t, _ in rec(list(images))] == [rec.charset.decode(r) for r in ids_t.numpy()]

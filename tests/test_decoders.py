"""Decoders: CTC against hand-computed values; causality and greedy decoding of the others."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sslocr_jax.models import decoders
from tests.helpers import fill_like

# A 4-class toy charset: 0 = "a", 1 = "b", 2 = EOS, 3 = PAD (CTC blank); BOS = 4.
A, B_, EOS, PAD, BOS = 0, 1, 2, 3, 4


def test_ctc_loss_hand_computed():
  # T = 2 frames, probabilities p[t] over (a, b, EOS, PAD=blank).
  p = np.array([[0.6, 0.1, 0.1, 0.2], [0.3, 0.2, 0.1, 0.4]])
  logits = jnp.asarray(np.log(p))[None].repeat(2, axis=0)
  labels = jnp.array([[A, EOS, PAD], [A, B_, EOS]])
  nll = decoders.ctc_loss(logits, labels, blank=PAD, eos=EOS, pad=PAD)
  # "a": paths (a a), (a -), (- a) = .6*.3 + .6*.4 + .2*.3 = .48; "ab": only (a b) = .6*.2.
  np.testing.assert_allclose(nll, [-np.log(0.48), -np.log(0.12)], rtol=1e-5)


def test_ctc_greedy_merges_repeats_and_drops_blanks():
  frames = [A, A, PAD, A, B_, B_, PAD, EOS]  # -> "a", "a", "b" (an EOS frame is a blank)
  logits = 10.0 * jax.nn.one_hot(jnp.array([frames, [PAD] * 8]), 4)
  ids, conf = decoders.ctc_greedy(logits, blank=PAD, eos=EOS, pad=PAD, length=5)
  np.testing.assert_array_equal(ids, [[A, A, B_, EOS, PAD], [EOS, PAD, PAD, PAD, PAD]])
  p_max = 1.0 / (1.0 + 3.0 * np.exp(-10.0))
  np.testing.assert_allclose(conf, [p_max**8] * 2, rtol=1e-5)


def test_official_ctc_head_shapes_and_formula():
  """head="dig" (DiG's CTCRecModel): LN(tokens) -> mean over height -> Linear(D, 512) -> LN ->
  GELU -> Linear(512, C), checked against a numpy reference."""
  dec = decoders.CtcDecoder(5, grid_h=2, head="dig", hidden_dim=16)
  feats = jax.random.normal(jax.random.PRNGKey(0), (3, 2 * 6, 8))
  params = nn.unbox(jax.eval_shape(dec.init, jax.random.PRNGKey(1), feats))["params"]
  shapes = jax.tree.map(lambda a: a.shape, params)  # abstract: values drawn below
  assert shapes == {
    "encoder_norm": {"scale": (8,), "bias": (8,)},
    "ctc_classifier": {
      "layers_0": {"kernel": (8, 16), "bias": (16,)},
      "layers_1": {"scale": (16,), "bias": (16,)},
      "layers_3": {"kernel": (16, 5), "bias": (5,)},
    },
  }
  params = jax.tree.map(lambda a: np.random.default_rng(a.size).normal(size=a.shape), params)
  out = dec.apply({"params": params}, feats)
  assert out.shape == (3, 6, 5) and out.dtype == jnp.float32

  def ln(x, p):
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + 1e-6) * p["scale"] + p["bias"]

  x = ln(np.asarray(feats, np.float64), params["encoder_norm"]).reshape(3, 2, 6, 8).mean(1)
  c = params["ctc_classifier"]
  h = ln(x @ c["layers_0"]["kernel"] + c["layers_0"]["bias"], c["layers_1"])
  h = 0.5 * h * (1 + np.vectorize(math.erf)(h / np.sqrt(2)))
  np.testing.assert_allclose(
    out, h @ c["layers_3"]["kernel"] + c["layers_3"]["bias"], rtol=2e-4, atol=2e-4
  )
  linear = decoders.CtcDecoder(5, grid_h=2, head="linear")
  assert set(jax.eval_shape(linear.init, jax.random.PRNGKey(1), feats)["params"]) == {"classifier"}


def _decoder(name):
  if name == "attention":
    return decoders.AttentionDecoder(5, hidden_dim=16, attention_dim=12, grid_h=2)
  return decoders.TransformerDecoder(
    5, d_model=16, num_layers=1, num_heads=2, mlp_dim=16, dropout_rate=0.0
  )


def _features(b=3):
  return jax.random.normal(jax.random.PRNGKey(0), (b, 2 * 6, 8))  # a 2 x 6 grid, D = 8


@pytest.fixture(scope="module", params=["attention", "transformer"])
def built(request):
  """A tiny decoder, its variables and its jitted apply / greedy decoding (compiled once for
  all the tests of this module: 3 lines, 6 steps)."""
  dec, feats = _decoder(request.param), _features()
  variables = fill_like(  # weights without compiling an init
    nn.unbox(jax.eval_shape(dec.init, jax.random.PRNGKey(1), feats, jnp.zeros((3, 6), jnp.int32)))
  )
  greedy = jax.jit(
    lambda v, f: decoders.greedy_decode(dec, v, f, length=6, bos=BOS, eos=EOS, pad=PAD)
  )
  return dict(
    name=request.param, feats=feats, variables=variables, apply=jax.jit(dec.apply), greedy=greedy
  )


def _eos_biased(built):
  """The params with the classifier's EOS bias at 100: greedy decoding stops at once."""
  params = jax.tree_util.tree_map(lambda x: x, built["variables"]["params"])
  holder = params["cell"] if built["name"] == "attention" else params
  key = "fc" if built["name"] == "attention" else "classifier"
  holder[key]["bias"] = holder[key]["bias"].at[EOS].set(100.0)
  return {"params": params}


def test_decoder_is_causal(built):
  inputs = jnp.array([[BOS, A, B_, A, B_, A]] * 3)
  logits = built["apply"](built["variables"], built["feats"], inputs)
  assert logits.shape == (3, 6, 5)
  changed = built["apply"](built["variables"], built["feats"], inputs.at[:, 3].set(EOS))
  np.testing.assert_array_equal(logits[:, :3], changed[:, :3])  # before the changed token
  assert not np.allclose(logits[:, 3:], changed[:, 3:])


def test_greedy_decode_follows_teacher_forcing_and_stops_at_eos(built):
  feats, variables = built["feats"], built["variables"]
  ids, conf = built["greedy"](variables, feats)
  # The cached / recurrent step path picks what the training path predicts from those tokens.
  tf_logits = built["apply"](
    variables, feats, jnp.concatenate([jnp.full((3, 1), BOS), ids[:, :-1]], 1)
  )
  for row, tf_row in zip(np.asarray(ids), np.argmax(tf_logits, -1)):
    n = list(row).index(EOS) + 1 if EOS in row else len(row)
    np.testing.assert_array_equal(row[:n], tf_row[:n])
    assert all(row[n:] == PAD)
  assert np.all((conf > 0) & (conf <= 1))
  # An EOS-biased classifier: EOS first, then only PAD, probability ~1.
  ids, conf = built["greedy"](_eos_biased(built), feats)
  np.testing.assert_array_equal(ids, [[EOS] + [PAD] * 5] * 3)
  np.testing.assert_allclose(conf, 1.0, atol=1e-6)


def test_greedy_decoding_compiles_once(built):
  """Other weights, other images, other word lengths: the same compiled function."""
  built["greedy"](built["variables"], built["feats"])
  ids, _ = built["greedy"](_eos_biased(built), -built["feats"])
  assert int(ids[0, 0]) == EOS
  assert built["greedy"]._cache_size() == 1  # pylint: disable=protected-access


_STEPS = []  # positions run by _Counter.step (recorded from inside the loop)


class _Counter(nn.Module):
  """A fake decoder: emits "a" until its row's EOS position (row 0: 2, row 1: 4, row 2: never)."""

  def prepare(self, features):
    return features

  def init_cache(self, memory, length):
    del memory, length
    return jnp.zeros((), jnp.int32)

  def step(self, memory, cache, token, pos):
    del token
    jax.debug.callback(lambda p: _STEPS.append(int(p)), pos)
    eos_at = jnp.array([2, 4, 99])[: memory.shape[0]]
    logits = jnp.where((pos == eos_at)[:, None], jax.nn.one_hot(EOS, 5), jax.nn.one_hot(A, 5))
    return 10.0 * logits, cache

  def __call__(self, features):
    return features


def test_greedy_decode_pads_after_eos_and_exits_early():
  run = lambda b: decoders.greedy_decode(
    _Counter(), {}, jnp.zeros((b, 1)), length=8, bos=BOS, eos=EOS, pad=PAD
  )
  _STEPS.clear()
  ids, _ = run(3)
  np.testing.assert_array_equal(
    ids, [[A, A, EOS] + [PAD] * 5, [A] * 4 + [EOS] + [PAD] * 3, [A] * 8]
  )
  assert _STEPS == list(range(8))  # row 2 never stops: all 8 steps
  _STEPS.clear()
  ids, _ = run(2)
  np.testing.assert_array_equal(ids, [[A, A, EOS] + [PAD] * 5, [A] * 4 + [EOS] + [PAD] * 3])
  assert _STEPS == list(range(5))  # every row has its EOS after 5 steps: the loop stops


def test_centred_ctc_frames_ignore_what_a_line_shares():
  """`center_frames`: the classifier reads each frame minus the image's mean frame, so a vector
  added to every token of an image (its background, say) leaves the logits unchanged while the
  uncentred head's move, and the logits equal the classifier on the centred frames."""
  feats = jax.random.normal(jax.random.PRNGKey(0), (3, 2 * 6, 8))
  shift = 5.0 * jax.random.normal(jax.random.PRNGKey(2), (3, 1, 8))
  centred = decoders.CtcDecoder(5, grid_h=2, head="linear", center_frames=True)
  plain = decoders.CtcDecoder(5, grid_h=2, head="linear")
  params = centred.init(jax.random.PRNGKey(1), feats)
  out = centred.apply(params, feats)
  np.testing.assert_allclose(centred.apply(params, feats + shift), out, rtol=1e-5, atol=1e-5)
  assert np.abs(plain.apply(params, feats + shift) - plain.apply(params, feats)).max() > 0.1
  frames = np.asarray(feats).reshape(3, 2, 6, 8).mean(1)
  frames -= frames.mean(1, keepdims=True)
  k = nn.unbox(params)["params"]["classifier"]
  np.testing.assert_allclose(out, frames @ k["kernel"] + k["bias"], rtol=1e-5, atol=1e-5)

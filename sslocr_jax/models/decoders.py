"""Recognition decoders on encoder features: CTC, attention (ASTER) and transformer (NRTR/DiG).

Every decoder reads the encoder's features `[B, N, D]`, row-major on a `grid_h x (N/grid_h)`
grid (models/encoders.py), and predicts over the charset's `C` classes (data/charset.py:
characters, EOS, PAD, UNK; BOS = C is a decoder input only):

    ctc          CtcDecoder(...)(features)                   -> logits [B, T, C], T = N / grid_h
    attention    AttentionDecoder(...)(features, inputs)     -> logits [B, L, C]  (teacher forcing)
    transformer  TransformerDecoder(...)(features, inputs)   -> logits [B, L, C]  (teacher forcing)
                 (`config.transformer.style="nrtr"`, default) or DigTransformerDecoder(...)
                 (`style="dig"`: the official DiG `TFDecoder`, for its fine-tuned checkpoints)

`inputs` int32 [B, L] are the targets shifted right: `[BOS, y_0, ..., y_{L-2}]`. CTC uses the
PAD id as its blank (PAD is never a target).

Greedy decoding (jit-friendly: fixed shapes, so one compilation per batch size, whatever the
lengths of the words):

    ids, conf = ctc_greedy(logits, blank=, eos=, pad=, length=L)
    ids, conf = greedy_decode(decoder, variables, features, length=L, bos=, eos=, pad=)

`ids` int32 [B, L] use the charset's layout: characters, EOS, then PAD (`Charset.decode`);
`conf` float32 [B] is the product of the per-step probabilities of the decoded path.

The autoregressive decoders expose the three methods `greedy_decode` needs, as pure `apply`
entry points, so the loop (`lax.while_loop`, stops when every sequence has emitted EOS) lives
outside the modules:

    memory = prepare(features)                   # encoder-side work done once
    cache = init_cache(memory, length)           # recurrent state / self-attention k, v cache
    logits [B, C], cache = step(memory, cache, token [B], pos)
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from sslocr_jax import posembed
from sslocr_jax.models import encoders

DECODERS = ("ctc", "attention", "transformer")
STYLES = ("nrtr", "dig")  # config.transformer.style
CTC_HEADS = ("dig", "linear")  # config.ctc.head

_dense_init = nn.initializers.xavier_uniform()
_zeros = nn.initializers.zeros
_ones = nn.initializers.ones


def _p(init, *names):
  return nn.with_logical_partitioning(init, names)


def _dense(features, names=("embed", "mlp"), use_bias=True, dtype=jnp.float32, name=None):
  return nn.Dense(
    features,
    use_bias=use_bias,
    dtype=dtype,
    param_dtype=jnp.float32,
    kernel_init=_p(_dense_init, *names),
    bias_init=_p(_zeros, names[-1]),
    name=name,
  )


def _layer_norm(dtype, name=None, eps=1e-6):
  return nn.LayerNorm(
    epsilon=eps,
    dtype=dtype,
    param_dtype=jnp.float32,
    scale_init=_p(_ones, "embed"),
    bias_init=_p(_zeros, "embed"),
    name=name,
  )


# ----------------------------------------------------------------------------- CTC
class CtcDecoder(nn.Module):
  """Features averaged over the grid height -> T frames -> a head to the C classes.

  `features [B, N, D]` -> logits `[B, N / grid_h, C]` (float32). Heads (`config.ctc.head`):
    dig     the release's CTC head (ayumiymk/DiG models/model_builder.py `CTCRecModel`): the
            fine-tuned ViT's final LayerNorm (`encoder_norm`, eps 1e-6) on the tokens, the
            mean over the height, then `ctc_classifier` = Linear(D, hidden_dim=512) ->
            LayerNorm(eps 1e-6) -> GELU (exact) -> Linear(hidden_dim, C);
    linear  one Linear(D, C) on the raw tokens averaged over the height (`classifier`).
  `center_frames` (`config.ctc.center_frames`, ours): the image's mean frame is subtracted from
  each of its frames before the classifier (after the LayerNorm for `dig`), so the head sees
  only what differs along the line (docs/recognition.md "Centred frames").
  """

  num_classes: int
  grid_h: int = 1
  head: str = "linear"
  hidden_dim: int = 512
  center_frames: bool = False
  dtype: Any = jnp.float32

  def _frames(self, features):
    """[B, N, D] -> [B, T, D], centred over T when `center_frames`."""
    frames = encoders.to_frames(features, self.grid_h)
    if self.center_frames:
      frames = frames - jnp.mean(frames, axis=1, keepdims=True)
    return frames

  def setup(self):
    if self.head == "linear":
      self.classifier = _dense(self.num_classes, ("embed", "vocab"), dtype=self.dtype)
      return
    if self.head != "dig":
      raise ValueError(f"config.ctc.head={self.head!r} is unknown; valid: {', '.join(CTC_HEADS)}")
    self.encoder_norm = _layer_norm(self.dtype)
    # params layers_{0,1,3} <-> PyTorch ctc_classifier.{0,1,3} (an nn.Sequential there too).
    self.ctc_classifier = nn.Sequential(
      [
        _dense(self.hidden_dim, ("embed", "mlp"), dtype=self.dtype),
        nn.LayerNorm(
          epsilon=1e-6,
          dtype=self.dtype,
          param_dtype=jnp.float32,
          scale_init=_p(_ones, "mlp"),
          bias_init=_p(_zeros, "mlp"),
        ),
        lambda y: nn.gelu(y, approximate=False),
        _dense(self.num_classes, ("mlp", "vocab"), dtype=self.dtype),
      ]
    )

  def __call__(self, features, *, train: bool = False):
    del train
    if self.head == "linear":
      return self.classifier(self._frames(features)).astype(jnp.float32)
    x = self.encoder_norm(features.astype(self.dtype))
    return self.ctc_classifier(self._frames(x)).astype(jnp.float32)


def ctc_loss(logits, labels, *, blank: int, eos: int, pad: int):
  """Per-sequence CTC negative log-likelihood, float32 [B].

  logits [B, T, C]; labels int32 [B, L] (ids, EOS, PAD...): EOS and PAD are padding.
  """
  label_paddings = ((labels == eos) | (labels == pad)).astype(jnp.float32)
  logit_paddings = jnp.zeros(logits.shape[:2], jnp.float32)
  return optax.ctc_loss(
    logits.astype(jnp.float32), logit_paddings, labels, label_paddings, blank_id=blank
  )


def ctc_greedy(logits, *, blank: int, eos: int, pad: int, length: int):
  """Best-path decoding: argmax per frame, merge repeats, drop blanks.

  logits [B, T, C] -> (ids int32 [B, length]: characters, EOS, PAD...; confidence float32 [B],
  the probability of the best path). An EOS predicted by a frame counts as a blank; text
  longer than `length - 1` is cut (no room for the EOS: `Charset.decode` reads all).
  """
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  best = jnp.argmax(probs, axis=-1).astype(jnp.int32)  # [B, T]
  conf = jnp.exp(jnp.sum(jnp.log(jnp.max(probs, axis=-1)), axis=-1))
  prev = jnp.pad(best[:, :-1], ((0, 0), (1, 0)), constant_values=blank)
  keep = (best != blank) & (best != eos) & (best != prev)
  pos = jnp.where(keep, jnp.cumsum(keep, axis=1) - 1, length)  # `length` is out of range
  rows = jnp.arange(best.shape[0])[:, None]
  ids = jnp.full((best.shape[0], length), pad, jnp.int32)
  ids = ids.at[rows, pos].set(best, mode="drop")
  n = jnp.sum(keep, axis=1)
  ids = ids.at[jnp.arange(best.shape[0]), n].set(eos, mode="drop")
  return ids, conf


# ----------------------------------------------------------------------------- attention
class _AttentionStep(nn.Module):
  """One ASTER decoder step (`DecoderUnit`): attend over the frames, GRU, classify."""

  num_classes: int
  hidden_dim: int
  attention_dim: int
  dtype: Any = jnp.float32

  def setup(self):
    self.s_proj = _dense(self.attention_dim, (None, "mlp"), dtype=self.dtype)  # sEmbed
    self.score = _dense(1, ("mlp", None), dtype=self.dtype)  # wEmbed
    self.tgt_embedding = nn.Embed(
      self.num_classes + 1,
      self.attention_dim,
      embedding_init=_p(nn.initializers.normal(0.02), "vocab", "mlp"),
      dtype=self.dtype,
      param_dtype=jnp.float32,
    )
    self.gru = nn.GRUCell(self.hidden_dim, dtype=self.dtype, param_dtype=jnp.float32)
    self.fc = _dense(self.num_classes, ("mlp", "vocab"), dtype=self.dtype)

  def __call__(self, memory, state, token):
    """memory {x [B, T, D], x_proj [B, T, A]}, state [B, H], token int32 [B]
    -> (logits [B, C] float32, state [B, H])."""
    e = self.score(jnp.tanh(memory["x_proj"] + self.s_proj(state)[:, None]))[..., 0]
    alpha = jax.nn.softmax(e.astype(jnp.float32), axis=-1).astype(self.dtype)  # [B, T]
    context = jnp.einsum("bt,btd->bd", alpha, memory["x"].astype(self.dtype))
    y = self.tgt_embedding(token)
    state, out = self.gru(state, jnp.concatenate([y, context], axis=-1))
    return self.fc(out).astype(jnp.float32), state


class AttentionDecoder(nn.Module):
  """ASTER-style 1-D attention GRU decoder over the T frames of the features.

  Training: `(features [B, N, D], inputs int32 [B, L]) -> logits [B, L, C]` with teacher
  forcing (a `nn.scan` over the L steps). Inference: `greedy_decode`.
  """

  num_classes: int
  hidden_dim: int = 512
  attention_dim: int = 512
  grid_h: int = 1
  dtype: Any = jnp.float32

  def setup(self):
    self.x_proj = _dense(self.attention_dim, ("embed", "mlp"), dtype=self.dtype)  # xEmbed
    self.cell = _AttentionStep(self.num_classes, self.hidden_dim, self.attention_dim, self.dtype)

  def prepare(self, features):
    x = encoders.to_frames(features, self.grid_h).astype(self.dtype)
    return {"x": x, "x_proj": self.x_proj(x)}

  def init_cache(self, memory, length: int):
    del length
    return jnp.zeros((memory["x"].shape[0], self.hidden_dim), self.dtype)

  def step(self, memory, cache, token, pos):
    del pos
    return self.cell(memory, cache, token)

  def __call__(self, features, inputs, *, train: bool = False):
    del train
    memory = self.prepare(features)
    state = self.init_cache(memory, inputs.shape[1])

    def body(cell, state, token, memory):
      logits, state = cell(memory, state, token)
      return state, logits

    scan = nn.scan(
      body,
      variable_broadcast="params",
      split_rngs={"params": False},
      in_axes=(1, nn.broadcast),
      out_axes=1,
    )
    _, logits = scan(self.cell, state, inputs, memory)
    return logits


# ----------------------------------------------------------------------------- transformer


def _split_heads(x, num_heads: int):
  """[B, S, d] -> [B, S, H, d / H]: the heads of both transformer decoders' attention."""
  return x.reshape(x.shape[:2] + (num_heads, x.shape[-1] // num_heads))


def _attend(q, k, v, mask, drop=None):
  """q [B, Lq, H, hd], k/v [B, S, H, hd], mask bool broadcastable to [B, H, Lq, S] or None;
  `drop`: optional dropout applied to the attention weights."""
  logits = jnp.einsum("bqhd,bkhd->bhqk", q, k).astype(jnp.float32) / np.sqrt(q.shape[-1])
  if mask is not None:
    logits = jnp.where(mask, logits, -1e9)
  attn = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  if drop is not None:
    attn = drop(attn)
  return jnp.einsum("bhqk,bkhd->bqhd", attn, v)


class MultiHeadAttention(nn.Module):
  """Pre-norm attention sublayer with its residual: `x + fc(attn(LN(x), k, v))`.

  Names follow the NRTR/DiG PyTorch layout (w_qs, w_ks, w_vs, fc, layer_norm).
  """

  d_model: int
  num_heads: int
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  def setup(self):
    dense = lambda names, bias, name: _dense(
      self.d_model, names, use_bias=bias, dtype=self.dtype, name=name
    )
    self.w_qs = dense(("embed", "heads"), False, "w_qs")
    self.w_ks = dense(("embed", "heads"), False, "w_ks")
    self.w_vs = dense(("embed", "heads"), False, "w_vs")
    self.fc = dense(("heads", "embed"), True, "fc")
    self.layer_norm = _layer_norm(self.dtype, "layer_norm")
    self.dropout = nn.Dropout(self.dropout_rate)

  def _split(self, x):
    return _split_heads(x, self.num_heads)

  def kv(self, x):
    """x [B, S, d] (already normalised) -> (k, v), each [B, S, H, d / H]."""
    return self._split(self.w_ks(x)), self._split(self.w_vs(x))

  def __call__(self, x, kv=None, mask=None, *, train: bool = False):
    """x [B, Lq, d]; kv: precomputed (k, v) or None for self-attention on LN(x)."""
    y = self.layer_norm(x)
    q = self._split(self.w_qs(y))
    k, v = self.kv(y) if kv is None else kv
    out = _attend(q, k, v, mask).reshape(x.shape[:2] + (self.d_model,))
    return x + self.dropout(self.fc(out), deterministic=not train)


class FeedForward(nn.Module):
  """Pre-norm position-wise MLP with its residual: `x + w_2(relu(w_1(LN(x))))`."""

  d_model: int
  mlp_dim: int
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    y = _layer_norm(self.dtype, "layer_norm")(x)
    y = nn.relu(_dense(self.mlp_dim, ("embed", "mlp"), dtype=self.dtype, name="w_1")(y))
    y = nn.Dropout(self.dropout_rate)(y, deterministic=not train)
    y = _dense(self.d_model, ("mlp", "embed"), dtype=self.dtype, name="w_2")(y)
    return x + nn.Dropout(self.dropout_rate)(y, deterministic=not train)


class DecoderLayer(nn.Module):
  """Masked self-attention, cross-attention on the encoder memory, MLP (all pre-norm)."""

  d_model: int
  num_heads: int
  mlp_dim: int
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  def setup(self):
    attn = lambda name: MultiHeadAttention(
      self.d_model, self.num_heads, self.dropout_rate, self.dtype, name=name
    )
    self.slf_attn = attn("slf_attn")
    self.enc_attn = attn("enc_attn")
    self.pos_ffn = FeedForward(
      self.d_model, self.mlp_dim, self.dropout_rate, self.dtype, name="pos_ffn"
    )

  def memory_kv(self, memory):
    return self.enc_attn.kv(memory)

  def __call__(self, x, enc_kv, mask, *, train: bool = False):
    """x [B, L, d], enc_kv (k, v) of the memory, mask bool [L, L] -> [B, L, d]."""
    x = self.slf_attn(x, mask=mask, train=train)
    x = self.enc_attn(x, kv=enc_kv, train=train)
    return self.pos_ffn(x, train=train)

  def step(self, x, pos, cache, enc_kv):
    """One position: x [B, 1, d]; cache (k, v) [B, L, H, hd] -> (x [B, 1, d], cache)."""
    k, v = self.slf_attn.kv(self.slf_attn.layer_norm(x))
    ck = jax.lax.dynamic_update_slice_in_dim(cache[0], k.astype(cache[0].dtype), pos, axis=1)
    cv = jax.lax.dynamic_update_slice_in_dim(cache[1], v.astype(cache[1].dtype), pos, axis=1)
    mask = (jnp.arange(ck.shape[1]) <= pos)[None, None, None, :]
    x = self.slf_attn(x, kv=(ck, cv), mask=mask)
    x = self.enc_attn(x, kv=enc_kv)
    return self.pos_ffn(x), (ck, cv)


class TransformerDecoder(nn.Module):
  """NRTR-style decoder of DiG: `linear_norm` bridge (Linear D->d_model + LayerNorm) on the
  encoder tokens, learned target embeddings ((C + 1) x d_model, incl. BOS) scaled by
  sqrt(d_model) plus sinusoidal positions, `num_layers` pre-norm layers, a final LayerNorm
  and the classifier d_model -> C.

  Training: `(features [B, N, D], inputs int32 [B, L]) -> logits [B, L, C]`, causal.
  Inference: `greedy_decode` with a k/v cache (one position per step).
  """

  num_classes: int
  d_model: int = 512
  num_layers: int = 6
  num_heads: int = 8
  mlp_dim: int = 2048
  dropout_rate: float = 0.1
  max_positions: int = 256
  dtype: Any = jnp.float32

  def setup(self):
    # linear_norm/layers_{0,1} <-> PyTorch linear_norm.{0,1} (an nn.Sequential there too).
    self.linear_norm = nn.Sequential(
      [_dense(self.d_model, ("embed", "mlp"), dtype=self.dtype), _layer_norm(self.dtype)]
    )
    self.trg_word_emb = nn.Embed(
      self.num_classes + 1,
      self.d_model,
      dtype=self.dtype,
      param_dtype=jnp.float32,
      embedding_init=_p(nn.initializers.normal(self.d_model**-0.5), "vocab", "embed"),
    )
    self.layer_stack = [
      DecoderLayer(self.d_model, self.num_heads, self.mlp_dim, self.dropout_rate, self.dtype)
      for _ in range(self.num_layers)
    ]
    self.layer_norm = _layer_norm(self.dtype)
    self.classifier = _dense(self.num_classes, ("embed", "vocab"), dtype=self.dtype)
    self.dropout = nn.Dropout(self.dropout_rate)

  def _embed(self, tokens, positions, train: bool):
    table = jnp.asarray(posembed.sincos_1d(self.max_positions, self.d_model), self.dtype)
    x = self.trg_word_emb(tokens) * jnp.asarray(np.sqrt(self.d_model), self.dtype)
    return self.dropout(x + table[positions], deterministic=not train)

  def prepare(self, features):
    """Encoder tokens -> each layer's cross-attention (k, v) [B, N, H, hd]."""
    memory = self.linear_norm(features.astype(self.dtype))
    return [layer.memory_kv(memory) for layer in self.layer_stack]

  def init_cache(self, memory, length: int):
    k = memory[0][0]
    shape = (k.shape[0], length) + k.shape[2:]
    return [(jnp.zeros(shape, self.dtype), jnp.zeros(shape, self.dtype)) for _ in self.layer_stack]

  def step(self, memory, cache, token, pos):
    x = self._embed(token[:, None], jnp.reshape(pos, (1,)), train=False)
    new_cache = []
    for layer, enc_kv, c in zip(self.layer_stack, memory, cache):
      x, c = layer.step(x, pos, c, enc_kv)
      new_cache.append(c)
    return self.classifier(self.layer_norm(x))[:, 0].astype(jnp.float32), new_cache

  def __call__(self, features, inputs, *, train: bool = False):
    memory = self.prepare(features)
    length = inputs.shape[1]
    x = self._embed(inputs, jnp.arange(length), train)
    mask = jnp.tril(jnp.ones((length, length), bool))
    for layer, enc_kv in zip(self.layer_stack, memory):
      x = layer(x, enc_kv, mask, train=train)
    return self.classifier(self.layer_norm(x)).astype(jnp.float32)


# ----------------------------------------------------------------------------- transformer (DiG)
class DigAttention(nn.Module):
  """Official DiG `MultiHeadAttention` (no residual, no norm): `fc(attn(linear_q(q), k, v))`,
  all four Linears without bias; dropout on the weights and after `fc`.

  `__call__(x [B, Lq, d], kv, mask) -> [B, Lq, d]`; `kv(y [B, S, d]) -> (k, v) [B, S, H, hd]`.
  """

  d_model: int
  num_heads: int
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  def setup(self):
    dense = lambda names, name: _dense(
      self.d_model, names, use_bias=False, dtype=self.dtype, name=name
    )
    self.linear_q = dense(("embed", "heads"), "linear_q")
    self.linear_k = dense(("embed", "heads"), "linear_k")
    self.linear_v = dense(("embed", "heads"), "linear_v")
    self.fc = dense(("heads", "embed"), "fc")
    self.attn_drop = nn.Dropout(self.dropout_rate)
    self.proj_drop = nn.Dropout(self.dropout_rate)

  def _split(self, x):
    return _split_heads(x, self.num_heads)

  def kv(self, y):
    return self._split(self.linear_k(y)), self._split(self.linear_v(y))

  def __call__(self, x, kv, mask=None, *, train: bool = False):
    q = self._split(self.linear_q(x))
    drop = (lambda a: self.attn_drop(a, deterministic=False)) if train else None
    out = _attend(q, *kv, mask, drop).reshape(x.shape[:2] + (self.d_model,))
    return self.proj_drop(self.fc(out), deterministic=not train)


class DigFeedForward(nn.Module):
  """Official `PositionwiseFeedForward`: `w_2(gelu(w_1(x)))` (exact GELU; no residual)."""

  d_model: int
  mlp_dim: int
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    y = _dense(self.mlp_dim, ("embed", "mlp"), dtype=self.dtype, name="w_1")(x)
    y = nn.Dropout(self.dropout_rate)(nn.gelu(y, approximate=False), deterministic=not train)
    y = _dense(self.d_model, ("mlp", "embed"), dtype=self.dtype, name="w_2")(y)
    return nn.Dropout(self.dropout_rate)(y, deterministic=not train)


class DigDecoderLayer(nn.Module):
  """Official `TransformerDecoderLayer` (pre-norm, LayerNorm eps 1e-5):

  x = x + self_attn(norm1(x));  x = x + enc_attn(norm2(x), memory);  x = x + mlp(norm3(x))
  """

  d_model: int
  num_heads: int
  mlp_dim: int
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  def setup(self):
    attn = lambda name: DigAttention(
      self.d_model, self.num_heads, self.dropout_rate, self.dtype, name=name
    )
    self.norm1 = _layer_norm(self.dtype, "norm1", eps=1e-5)
    self.norm2 = _layer_norm(self.dtype, "norm2", eps=1e-5)
    self.norm3 = _layer_norm(self.dtype, "norm3", eps=1e-5)
    self.self_attn = attn("self_attn")
    self.enc_attn = attn("enc_attn")
    self.mlp = DigFeedForward(self.d_model, self.mlp_dim, self.dropout_rate, self.dtype, name="mlp")

  def memory_kv(self, memory):
    return self.enc_attn.kv(memory)

  def _rest(self, x, enc_kv, train):
    x = x + self.enc_attn(self.norm2(x), enc_kv, train=train)
    return x + self.mlp(self.norm3(x), train=train)

  def __call__(self, x, enc_kv, mask, *, train: bool = False):
    """x [B, L, d], enc_kv (k, v) of the memory, mask bool [L, L] -> [B, L, d]."""
    y = self.norm1(x)
    x = x + self.self_attn(y, self.self_attn.kv(y), mask, train=train)
    return self._rest(x, enc_kv, train)

  def step(self, x, pos, cache, enc_kv):
    """One position: x [B, 1, d]; cache (k, v) [B, L, H, hd] -> (x [B, 1, d], cache)."""
    y = self.norm1(x)
    k, v = self.self_attn.kv(y)
    ck = jax.lax.dynamic_update_slice_in_dim(cache[0], k.astype(cache[0].dtype), pos, axis=1)
    cv = jax.lax.dynamic_update_slice_in_dim(cache[1], v.astype(cache[1].dtype), pos, axis=1)
    mask = (jnp.arange(ck.shape[1]) <= pos)[None, None, None, :]
    x = x + self.self_attn(y, (ck, cv), mask)
    return self._rest(x, enc_kv, False), (ck, cv)


class DigTransformerDecoder(TransformerDecoder):
  """The official DiG `TFDecoder` with the recognizer's bridge, numerically:

      memory = linear_norm(encoder_norm(features))   LN eps 1e-6 (the fine-tuned ViT's final
                                                     `encoder.norm`), Linear D -> d, LN eps 1e-5
      x = trg_word_emb(tokens) + position_table[:L]  (no sqrt(d) scale; fixed table, n_position)
      x = layer_stack(x, memory)                     (DigDecoderLayer, causal self-attention)
      logits = classifier(layer_norm(x))             (LN eps 1e-6; classifier with bias)

  Same interface as `TransformerDecoder` (teacher forcing, `prepare` / `init_cache` / `step`
  for `greedy_decode`). Decoding length must stay <= n_position (200 in the release).
  """

  n_position: int = 200

  def setup(self):
    self.encoder_norm = _layer_norm(self.dtype, "encoder_norm")
    self.linear_norm = nn.Sequential(
      [_dense(self.d_model, ("embed", "mlp"), dtype=self.dtype), _layer_norm(self.dtype, eps=1e-5)]
    )
    self.trg_word_emb = nn.Embed(
      self.num_classes + 1,
      self.d_model,
      dtype=self.dtype,
      param_dtype=jnp.float32,
      embedding_init=_p(nn.initializers.normal(1.0), "vocab", "embed"),
    )  # nn.Embedding's
    self.layer_stack = [
      DigDecoderLayer(self.d_model, self.num_heads, self.mlp_dim, self.dropout_rate, self.dtype)
      for _ in range(self.num_layers)
    ]
    self.layer_norm = _layer_norm(self.dtype)
    self.classifier = _dense(self.num_classes, ("embed", "vocab"), dtype=self.dtype)
    self.dropout = nn.Dropout(self.dropout_rate)

  def _check_length(self, length: int):
    if length > self.n_position:
      raise ValueError(f"{length} target positions > transformer.n_position={self.n_position}")

  def _embed(self, tokens, positions, train: bool):
    self._check_length(positions.shape[0])
    table = jnp.asarray(posembed.dig_position_table(self.n_position, self.d_model), self.dtype)
    return self.dropout(self.trg_word_emb(tokens) + table[positions], deterministic=not train)

  def init_cache(self, memory, length: int):
    self._check_length(length)
    return super().init_cache(memory, length)

  def prepare(self, features):
    memory = self.linear_norm(self.encoder_norm(features.astype(self.dtype)))
    return [layer.memory_kv(memory) for layer in self.layer_stack]


# ----------------------------------------------------------------------------- greedy
def greedy_decode(decoder, variables, features, *, length: int, bos: int, eos: int, pad: int):
  """Autoregressive greedy decoding of `decoder` (attention or transformer).

  Runs `step` at most `length` times in a `lax.while_loop` that stops once every sequence has
  emitted EOS; after its EOS a sequence is filled with PAD. Shapes never depend on the words,
  so a jitted caller compiles once per batch size.

  Args:
    decoder: an `AttentionDecoder` / `TransformerDecoder` (unbound).
    variables: its variables (`{"params": ...}`).
    features: encoder features [B, N, D].
  Returns:
    ids int32 [B, length] (characters, EOS, PAD...), confidence float32 [B] (product of the
    chosen tokens' probabilities up to and including EOS).
  """
  memory = decoder.apply(variables, features, method=decoder.prepare)
  cache = decoder.apply(variables, memory, length, method=decoder.init_cache)
  b = features.shape[0]

  def cond(carry):
    pos, _, _, done, _, _ = carry
    return (pos < length) & ~jnp.all(done)

  def body(carry):
    pos, token, cache, done, ids, logp = carry
    logits, cache = decoder.apply(variables, memory, cache, token, pos, method=decoder.step)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    nxt = jnp.argmax(log_probs, axis=-1).astype(jnp.int32)
    nxt = jnp.where(done, pad, nxt)
    logp = logp + jnp.where(done, 0.0, jnp.max(log_probs, axis=-1))
    ids = jax.lax.dynamic_update_slice_in_dim(ids, nxt[:, None], pos, axis=1)
    return pos + 1, nxt, cache, done | (nxt == eos), ids, logp

  init = (
    jnp.zeros((), jnp.int32),
    jnp.full((b,), bos, jnp.int32),
    cache,
    jnp.zeros((b,), bool),
    jnp.full((b, length), pad, jnp.int32),
    jnp.zeros((b,), jnp.float32),
  )
  _, _, _, _, ids, logp = jax.lax.while_loop(cond, body, init)
  return ids, jnp.exp(logp)


def from_config(config, num_classes: int, grid_h: int):
  """The decoder named by `config.decoder` with its sizes from `config.<decoder>`."""
  name = config.decoder
  dtype = encoders.compute_dtype(config)
  if name == "ctc":
    ctc = config.get("ctc", None) or {}
    return CtcDecoder(
      num_classes,
      grid_h=grid_h,
      head=ctc.get("head", "linear"),
      hidden_dim=ctc.get("hidden_dim", 512),
      center_frames=bool(ctc.get("center_frames", False)),
      dtype=dtype,
    )
  if name == "attention":
    a = config.attention
    return AttentionDecoder(
      num_classes,
      hidden_dim=a.hidden_dim,
      attention_dim=a.attention_dim,
      grid_h=grid_h,
      dtype=dtype,
    )
  if name == "transformer":
    t = config.transformer
    kw = dict(
      d_model=t.d_model,
      num_layers=t.num_layers,
      num_heads=t.num_heads,
      mlp_dim=t.mlp_dim,
      dropout_rate=t.get("dropout_rate", 0.0),
      dtype=dtype,
    )
    style = t.get("style", "nrtr")
    if style == "dig":
      return DigTransformerDecoder(num_classes, n_position=t.get("n_position", 200), **kw)
    if style != "nrtr":
      raise ValueError(f"config.transformer.style={style!r} is unknown; valid: {', '.join(STYLES)}")
    return TransformerDecoder(num_classes, **kw)
  raise ValueError(f"config.decoder={name!r} is unknown; valid: {', '.join(DECODERS)}")

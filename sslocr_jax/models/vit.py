"""ViT encoder for text lines (DiG / BEiT style), flax linen.

Input `[B, 32, 128, 3]` in [-1, 1] -> 4x4 patches -> 8x32 = 256 tokens `[B, 256, D]`.
No class token, no final norm, fixed 1-D sin-cos position table (not a param).

Param tree (maps 1:1 onto the official DiG PyTorch `encoder.*` state dict):

    patch_embed/proj/{kernel [4,4,3,D], bias [D]}     <- patch_embed.proj.{weight,bias}
    mask_token [1,1,D]                                <- mask_token
    blocks_{i}/norm1/{scale,bias} [D]                 <- blocks.i.norm1.{weight,bias}
    blocks_{i}/attn/qkv/kernel [D,3D]                 <- blocks.i.attn.qkv.weight (no bias)
    blocks_{i}/attn/{q_bias,v_bias} [D]               <- blocks.i.attn.{q_bias,v_bias}
    blocks_{i}/attn/proj/{kernel [D,D], bias [D]}     <- blocks.i.attn.proj.*
    blocks_{i}/norm2/{scale,bias} [D]                 <- blocks.i.norm2.*
    blocks_{i}/mlp/fc1/{kernel [D,4D], bias [4D]}     <- blocks.i.mlp.fc1.*
    blocks_{i}/mlp/fc2/{kernel [4D,D], bias [D]}      <- blocks.i.mlp.fc2.*

Every param is boxed with logical axis names (`nn.with_logical_partitioning`);
`nn.unbox(variables)` gives plain arrays, and `apply` accepts either.
"""

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from sslocr_jax import posembed
from sslocr_jax.models import encoders

# Official DiG sizes (depth 12, MLP ratio 4). "mu" is a micro model for CPU tests.
SIZES = {
  "mu": dict(embed_dim=32, depth=1, num_heads=2),
  "tiny": dict(embed_dim=192, depth=12, num_heads=3),
  "small": dict(embed_dim=384, depth=12, num_heads=6),
  "base": dict(embed_dim=512, depth=12, num_heads=8),
}

_LN_EPS = 1e-6
_dense_init = nn.initializers.xavier_uniform()
_zeros = nn.initializers.zeros
_ones = nn.initializers.ones
# DiG's MoCo model re-inits the patch conv as xavier-uniform on the [3*p*p, D] matrix.
_patch_init = nn.initializers.variance_scaling(
  1.0, "fan_avg", "uniform", in_axis=(0, 1, 2), out_axis=-1
)


def _p(init, *names):
  return nn.with_logical_partitioning(init, names)


def encoder_kwargs(size: str, **overrides) -> dict[str, Any]:
  """`Encoder` kwargs for a named size, e.g. `Encoder(**encoder_kwargs("small"))`."""
  if size not in SIZES:
    raise ValueError(f"Unknown ViT size {size!r}; known: {sorted(SIZES)}")
  return {**SIZES[size], **overrides}


class DropPath(nn.Module):
  """Stochastic depth per sample (timm `drop_path`): `x [B, ...]` -> same shape."""

  rate: float

  @nn.compact
  def __call__(self, x, deterministic: bool):
    if deterministic or self.rate == 0.0:
      return x
    keep = 1.0 - self.rate
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    mask = jax.random.bernoulli(self.make_rng("dropout"), keep, shape)
    return jnp.where(mask, x / keep, jnp.zeros_like(x))


class PatchEmbed(nn.Module):
  """4x4 stride-4 conv, row-major flatten: `[B, H, W, 3]` -> `[B, (H/p)*(W/p), D]`."""

  embed_dim: int
  patch_size: int = 4
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images):
    p = self.patch_size
    x = nn.Conv(
      self.embed_dim,
      (p, p),
      strides=(p, p),
      padding="VALID",
      dtype=self.dtype,
      param_dtype=jnp.float32,
      kernel_init=_p(_patch_init, None, None, None, "embed"),
      bias_init=_p(_zeros, "embed"),
      name="proj",
    )(images)
    b, h, w, d = x.shape
    return x.reshape(b, h * w, d)  # token = row * W/p + col


def exact_gelu(x):
  """GELU with the exact erf, written as torch's `nn.GELU()`: x / 2 * (1 + erf(x / sqrt 2)).

  `nn.gelu(approximate=False)` (jax.nn.gelu) is the same function written with erfc, which
  XLA:CPU expands into exp-based branches; erf is one rational polynomial, and a ViT block's
  forward + backward is ~4% faster on CPU (docs/benchmarks.md, issue 17). Values and
  gradients equal to float rounding.
  """
  return x * (0.5 + 0.5 * jax.lax.erf(x * np.asarray(2**-0.5, x.dtype)))


ATTENTION_IMPLS = ("auto", "xla", "cudnn", "explicit")


def _fused_attention_by_default() -> bool:
  """jax.nn.dot_product_attention on GPU/TPU (XLA may pick a fused kernel, cuDNN flash
  attention for bf16); the explicit head-major form below on CPUs, where it is faster."""
  return jax.devices()[0].platform in encoders.ACCELERATOR_PLATFORMS


def _auto_impl(dtype) -> str:
  """ "cudnn" on NVIDIA GPUs in bf16/fp16 (the fused flash kernel: 1.31x the DiG ViT-Small
  step and 40% less memory than "xla" on an H200, docs/benchmarks.md), "xla" on other
  accelerators and dtypes, "explicit" on CPUs."""
  if not _fused_attention_by_default():
    return "explicit"
  half = jnp.dtype(dtype) in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16))
  return "cudnn" if half and jax.devices()[0].platform in ("gpu", "cuda") else "xla"


class Attention(nn.Module):
  """BEiT attention: one bias-free qkv Linear + learned q_bias, v_bias (k unbiased).

  `x [B, N, D]` -> `[B, N, D]`. `impl` (`ATTENTION_IMPLS`): "auto" = by platform and dtype
  (`_auto_impl`: "cudnn" on GPUs in bf16/fp16, "xla" on other accelerators, "explicit" on
  CPUs); "xla" / "cudnn" =
  `jax.nn.dot_product_attention` on `[B, N, h, hd]` with that `implementation` ("cudnn": the
  cuDNN fused kernel, GPUs with bf16/fp16 only); "explicit" = the explicit form: one
  transpose of the qkv output to head-major `[3, B, h, N, hd]`, q scaled as the release does,
  logits `[B, h, N, N]`, float32 softmax with the normalisation applied after the p.v product
  (`[B, h, N, hd]`, hd << N: one pass fewer over the N x N probabilities), transposed back.
  Attention dropout (fine-tuning) needs the normalised probabilities and always takes the
  explicit form with them.
  """

  num_heads: int
  attn_dropout_rate: float = 0.0
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  impl: str = "auto"

  @nn.compact
  def __call__(self, x, deterministic: bool):
    b, n, d = x.shape
    h, hd = self.num_heads, d // self.num_heads
    qkv = nn.Dense(
      3 * d,
      use_bias=False,
      dtype=self.dtype,
      param_dtype=jnp.float32,
      kernel_init=_p(_dense_init, "embed", "heads"),
      name="qkv",
    )(x)
    q_bias = self.param("q_bias", _p(_zeros, "heads"), (d,), jnp.float32)
    v_bias = self.param("v_bias", _p(_zeros, "heads"), (d,), jnp.float32)
    bias = jnp.concatenate([q_bias, jnp.zeros_like(q_bias), v_bias]).astype(self.dtype)
    qkv = (qkv + bias).reshape(b, n, 3, h, hd)  # PyTorch layout: (3, heads, head_dim)
    dropout = not deterministic and self.attn_dropout_rate > 0.0
    if self.impl not in ATTENTION_IMPLS:
      raise ValueError(f"model.attention={self.impl!r} is unknown; valid: {ATTENTION_IMPLS}")
    impl = self.impl
    if impl == "auto":
      impl = _auto_impl(self.dtype)
    if impl != "explicit" and not dropout:
      q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # [B, N, h, hd]
      out = jax.nn.dot_product_attention(q, k, v, scale=hd**-0.5, implementation=impl)
      out = out.reshape(b, n, d)
    else:
      # Heads before tokens: the two batched dots then run as [N, hd] x [hd, N] per (b, h),
      # about 10% faster for the block's forward + backward on XLA:CPU than with the heads
      # between the token and channel axes (docs/benchmarks.md, issue 17).
      q, k, v = qkv.transpose(2, 0, 3, 1, 4)  # each [B, h, N, hd]
      q = q * jnp.asarray(hd**-0.5, self.dtype)
      logits = jnp.einsum("bhqd,bhkd->bhqk", q, k).astype(jnp.float32)
      e = jnp.exp(logits - jax.lax.stop_gradient(jnp.max(logits, axis=-1, keepdims=True)))
      total = jnp.sum(e, axis=-1, keepdims=True)  # [B, h, N, 1]
      if dropout:
        attn = (e / total).astype(self.dtype)
        attn = nn.Dropout(self.attn_dropout_rate)(attn, deterministic=False)
        out = jnp.einsum("bhqk,bhkd->bhqd", attn, v)
      else:
        out = jnp.einsum("bhqk,bhkd->bhqd", e.astype(self.dtype), v)
        out = (out.astype(jnp.float32) / total).astype(self.dtype)
      out = out.transpose(0, 2, 1, 3).reshape(b, n, d)
    out = nn.Dense(
      d,
      dtype=self.dtype,
      param_dtype=jnp.float32,
      kernel_init=_p(_dense_init, "heads", "embed"),
      bias_init=_p(_zeros, "embed"),
      name="proj",
    )(out)
    return nn.Dropout(self.dropout_rate)(out, deterministic=deterministic)


class Mlp(nn.Module):
  """fc1 -> exact GELU -> fc2 -> dropout: `[B, N, D]` -> `[B, N, D]`."""

  hidden_dim: int
  dropout_rate: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, deterministic: bool):
    d = x.shape[-1]
    x = nn.Dense(
      self.hidden_dim,
      dtype=self.dtype,
      param_dtype=jnp.float32,
      kernel_init=_p(_dense_init, "embed", "mlp"),
      bias_init=_p(_zeros, "mlp"),
      name="fc1",
    )(x)
    x = exact_gelu(x)
    x = nn.Dense(
      d,
      dtype=self.dtype,
      param_dtype=jnp.float32,
      kernel_init=_p(_dense_init, "mlp", "embed"),
      bias_init=_p(_zeros, "embed"),
      name="fc2",
    )(x)
    return nn.Dropout(self.dropout_rate)(x, deterministic=deterministic)


def _layer_norm(dtype, name):
  return nn.LayerNorm(
    epsilon=_LN_EPS,
    dtype=dtype,
    param_dtype=jnp.float32,
    scale_init=_p(_ones, "embed"),
    bias_init=_p(_zeros, "embed"),
    name=name,
  )  # statistics in float32 (force_float32_reductions)


class Block(nn.Module):
  """Pre-norm transformer block: `[B, N, D]` -> `[B, N, D]`."""

  num_heads: int
  mlp_ratio: float = 4.0
  drop_path_rate: float = 0.0
  dropout_rate: float = 0.0
  attn_dropout_rate: float = 0.0
  dtype: Any = jnp.float32
  attention: str = "auto"

  @nn.compact
  def __call__(self, x, train: bool = False):
    det = not train
    d = x.shape[-1]
    drop_path = DropPath(self.drop_path_rate)
    y = _layer_norm(self.dtype, "norm1")(x)
    y = Attention(
      self.num_heads,
      self.attn_dropout_rate,
      self.dropout_rate,
      dtype=self.dtype,
      impl=self.attention,
      name="attn",
    )(y, det)
    x = x + drop_path(y, det)
    y = _layer_norm(self.dtype, "norm2")(x)
    y = Mlp(int(d * self.mlp_ratio), self.dropout_rate, dtype=self.dtype, name="mlp")(y, det)
    return x + drop_path(y, det)


class Encoder(nn.Module):
  """DiG ViT encoder.

  Attributes:
    embed_dim, depth, num_heads, mlp_ratio: transformer size (see `SIZES`).
    patch_size, image_size: 4 and (32, 128) -> 8x32 = 256 tokens.
    drop_path_rate: stochastic depth, linear 0 -> rate over the blocks (0 in DiG
      pretraining, 0.1 in fine-tuning).
    dropout_rate, attn_dropout_rate: DiG fine-tuning's `--drop` (after the attention proj
      and the MLP) and `--attn_drop_rate`; 0 in pretraining.
    pos_dropout: also apply `dropout_rate` after the position table. False as in the release
      (modeling_pretrain_vit.py `PretrainVisionTransformerEncoder`, the encoder DiG
      fine-tunes, has no `pos_drop`); True is this project's older behaviour.
    dtype: compute dtype; params stay float32, softmax and LayerNorm stats float32.
    remat: rematerialisation policy of each block: none | full | save_dots
      (`encoders.REMAT_POLICIES`; True/False of older configs = full/none).
    attention: auto | xla | cudnn | explicit (`Attention.impl`); numerics equal to float
      rounding, speed differs by device (docs/benchmarks.md).
  """

  embed_dim: int
  depth: int
  num_heads: int
  mlp_ratio: float = 4.0
  patch_size: int = 4
  image_size: tuple[int, int] = (32, 128)
  drop_path_rate: float = 0.0
  dropout_rate: float = 0.0
  attn_dropout_rate: float = 0.0
  pos_dropout: bool = False
  dtype: Any = jnp.float32
  remat: str | bool = "none"
  attention: str = "auto"

  @property
  def num_patches(self) -> int:
    return (self.image_size[0] // self.patch_size) * (self.image_size[1] // self.patch_size)

  @nn.compact
  def __call__(self, images, mask=None, *, train: bool = False):
    """images `[B, 32, 128, 3]` in [-1, 1], mask bool `[B, 256]` (True = masked) or None
    -> tokens `[B, 256, D]` in `dtype`."""
    if tuple(images.shape[1:3]) != tuple(self.image_size):
      raise ValueError(f"Expected images [B, {self.image_size}, 3], got {images.shape}")
    x = PatchEmbed(self.embed_dim, self.patch_size, self.dtype, name="patch_embed")(
      images.astype(self.dtype)
    )
    # DiG initializes the mask token to zeros (it is not re-initialized in the release).
    mask_token = self.param(
      "mask_token", _p(_zeros, None, None, "embed"), (1, 1, self.embed_dim), jnp.float32
    )
    if mask is not None:
      m = mask[..., None].astype(self.dtype)
      x = x * (1 - m) + mask_token.astype(self.dtype) * m
    pos = posembed.sincos_1d(self.num_patches, self.embed_dim)
    x = x + jnp.asarray(pos, self.dtype)[None]
    if self.pos_dropout:
      x = nn.Dropout(self.dropout_rate)(x, deterministic=not train)

    block_cls = encoders.remat_block(Block, self.remat)
    rates = np.linspace(0.0, self.drop_path_rate, self.depth) if self.depth else []
    for i in range(self.depth):
      x = block_cls(
        self.num_heads,
        self.mlp_ratio,
        float(rates[i]),
        self.dropout_rate,
        self.attn_dropout_rate,
        dtype=self.dtype,
        attention=self.attention,
        name=f"blocks_{i}",
      )(x, train)
    return x

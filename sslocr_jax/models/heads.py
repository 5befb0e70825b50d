"""Heads on top of the encoder: MoCo-v3 style BN-MLPs and DiG's SimMIM pixel head.

`MLP` param tree and the official PyTorch `nn.Sequential` index it maps onto
(`_build_mlp` in DiG / MoCo v3: Linear, BatchNorm1d, ReLU per hidden layer):

    linear_{l}/kernel [in, out]         <- {l*3}.weight (transposed); bias only if use_bias
    bn_{l}/{scale,bias}                 <- {l*3+1}.{weight,bias} (absent: last BN, no affine)
    batch_stats: bn_{l}/{mean,var}      <- {l*3+1}.running_{mean,var}

`MimHead` maps onto `pix_decoder`: linear_0 <- 0, linear_1 <- 1, norm <- 2, linear_2 <- 4.

BatchNorm statistics are over all leading axes of the (global) batch: under `jax.jit`
with a sharded batch XLA computes them across devices, so no `axis_name` is needed.
PyTorch momentum 0.1 == flax momentum 0.9. One difference remains: PyTorch updates
`running_var` with the unbiased batch variance, flax with the biased one (factor N/(N-1);
train-mode outputs are identical, only eval-mode BN after import/export is affected).
"""

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

_dense_init = nn.initializers.xavier_uniform()
_zeros = nn.initializers.zeros
_ones = nn.initializers.ones


def _p(init, *names):
  return nn.with_logical_partitioning(init, names)


class MLP(nn.Module):
  """MoCo v3 `_build_mlp`: [Linear -> BN -> ReLU] * (L-1) -> Linear [-> BN].

  `x [..., Din]` -> `[..., out_dim]`; BN statistics over all leading axes.

  Attributes:
    num_layers: number of Linear layers L.
    hidden_dim: width of the L-1 hidden layers.
    out_dim: output width.
    use_bias: biases on the Linear layers (False in MoCo v3 / DiG).
    last_bn: BatchNorm after the last Linear.
    last_bn_affine: whether that last BN has scale/bias (False in MoCo v3 / DiG).
    dtype: compute dtype (params float32, BN statistics float32).
  """

  num_layers: int
  hidden_dim: int
  out_dim: int
  use_bias: bool = False
  last_bn: bool = True
  last_bn_affine: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool):
    for l in range(self.num_layers):
      last = l == self.num_layers - 1
      dim = self.out_dim if last else self.hidden_dim
      in_name = "embed" if l == 0 else "mlp"
      out_name = "embed" if last else "mlp"
      in_name = None if in_name == out_name else in_name  # no logical axis named twice
      feat_name = "embed" if last else "mlp"
      x = nn.Dense(
        dim,
        use_bias=self.use_bias,
        dtype=self.dtype,
        param_dtype=jnp.float32,
        kernel_init=_p(_dense_init, in_name, out_name),
        bias_init=_p(_zeros, feat_name),
        name=f"linear_{l}",
      )(x)
      if last and not self.last_bn:
        break
      affine = self.last_bn_affine if last else True
      x = nn.BatchNorm(
        use_running_average=not train,
        momentum=0.9,
        epsilon=1e-5,
        use_scale=affine,
        use_bias=affine,
        dtype=self.dtype,
        param_dtype=jnp.float32,
        scale_init=_p(_ones, feat_name),
        bias_init=_p(_zeros, feat_name),
        name=f"bn_{l}",
      )(x)
      if not last:
        x = nn.relu(x)
    return x


def pix_projector(embed_dim: int, hidden_dim: int = 512, **kw) -> MLP:
  """DiG `pix_projector`: `_build_mlp(3, D, 512, D)`, i.e. D -> 512 -> 512 -> D with
  BN+ReLU between and a last BN without affine (the release's default `last_bn=True`).
  Applied per token of the masked view: `[B, 256, D]` -> `[B, 256, D]`."""
  return MLP(3, hidden_dim, embed_dim, **kw)


def projector(hidden_dim: int = 4096, out_dim: int = 256, **kw) -> MLP:
  """DiG / MoCo v3 projector: D -> 4096 -> 4096 -> 256, last BN without affine."""
  return MLP(3, hidden_dim, out_dim, **kw)


def predictor(hidden_dim: int = 4096, out_dim: int = 256, last_bn: bool = True, **kw) -> MLP:
  """Query-side predictor: 256 -> 4096 -> 256.

  DiG's release builds it with `_build_mlp(2, dim, mlp_dim, dim)` and the default
  `last_bn=True` (last BN without affine, so its checkpoints hold
  `predictor.3.running_{mean,var}`); MoCo v3 itself uses `last_bn=False`.
  """
  return MLP(2, hidden_dim, out_dim, last_bn=last_bn, **kw)


class MimHead(nn.Module):
  """DiG's SimMIM head (`pix_decoder`): `[..., D]` -> `[..., patch_pixels]`.

  Linear(D->192, no bias) -> Linear(192->192, no bias) -> LayerNorm(eps 1e-6)
  -> exact GELU -> Linear(192->48, bias); 48 = 4*4*3 pixels laid out (p1 p2 c).
  `embed_dim` only checks the input width (None: inferred).
  """

  embed_dim: int | None = None
  hidden: int = 192
  patch_pixels: int = 48
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    if self.embed_dim is not None and x.shape[-1] != self.embed_dim:
      raise ValueError(f"MimHead expects width {self.embed_dim}, got {x.shape}")
    dense = lambda n, names, bias, name: nn.Dense(
      n,
      use_bias=bias,
      dtype=self.dtype,
      param_dtype=jnp.float32,
      kernel_init=_p(_dense_init, *names),
      bias_init=_p(_zeros, names[1]),
      name=name,
    )
    x = dense(self.hidden, ("embed", "mlp"), False, "linear_0")(x)
    x = dense(self.hidden, (None, "mlp"), False, "linear_1")(x)
    x = nn.LayerNorm(
      epsilon=1e-6,
      dtype=self.dtype,
      param_dtype=jnp.float32,
      scale_init=_p(_ones, "mlp"),
      bias_init=_p(_zeros, "mlp"),
      name="norm",
    )(x)
    x = nn.gelu(x, approximate=False)
    return dense(self.patch_pixels, ("mlp", None), True, "linear_2")(x)

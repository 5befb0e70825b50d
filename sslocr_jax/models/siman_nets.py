"""SimAN networks: similarity-aware normalization (SAN), the upsampling decoder, the PatchGAN
discriminator (flax linen). The encoder comes from models/encoders.py.

    Fa, Fs  [B, Na, D], [B, Ns, D]       encoder features of the augmented / source patch
    SAN:    A = softmax(q(IN(Fa)) k(IN(Fs))^T / sqrt(d))                 [B, Na, Ns]
            mean = A Fs,  std = sqrt(relu(A (Fs * Fs) - mean^2) + eps)   [B, Na, D]
            out  = std * IN(Fa) + mean                                   [B, Na, D]
    Decoder: out as a grid_h x grid_w map -> [B, H, W, 3] in [-1, 1]
    Discriminator: [B, H, W, 3] -> patch logits [B, H / 2^n, W / 2^n, 1]

IN is instance normalization over the positions of each example, per channel. Shapes in
the pure functions are `[B, N, D]` (N positions of a grid, row-major).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

_conv_init = nn.initializers.he_normal()
_dense_init = nn.initializers.xavier_uniform()
_zeros = nn.initializers.zeros


def _p(init, *names):
  return nn.with_logical_partitioning(init, names)


def _conv(features, kernel, strides=1, name=None):
  return nn.Conv(
    features,
    (kernel, kernel),
    strides=strides,
    padding="SAME",
    kernel_init=_p(_conv_init, None, None, "conv_in", "conv_out"),
    bias_init=_p(_zeros, "conv_out"),
    name=name,
  )


# ----------------------------------------------------------------------------- SAN, pure parts
def spatial_stats(x, eps: float = 1e-5):
  """Per-example, per-channel mean and std over positions: x [B, N, D] -> ([B, 1, D], [B, 1, D])."""
  mean = jnp.mean(x, axis=1, keepdims=True)
  var = jnp.mean(jnp.square(x - mean), axis=1, keepdims=True)
  return mean, jnp.sqrt(var + eps)


def instance_norm(x, eps: float = 1e-5):
  """x [B, N, D] -> [B, N, D] with zero mean and unit std over N, per example and channel."""
  mean, std = spatial_stats(x, eps)
  return (x - mean) / std


def attention(q, k):
  """Scaled dot-product attention weights: q [B, Na, d], k [B, Ns, d] -> A [B, Na, Ns]
  (each row sums to 1)."""
  logits = jnp.einsum("bnd,bmd->bnm", q, k) / jnp.sqrt(jnp.float32(q.shape[-1]))
  return jax.nn.softmax(logits, axis=-1)


def aligned_stats(attn, fs, eps: float = 1e-5):
  """Attention-weighted local style statistics of the source, per target position (ours).

  attn [B, Na, Ns], fs [B, Ns, D] -> mean, std [B, Na, D]:
  mean = A Fs, std = sqrt(relu(A (Fs * Fs) - mean^2) + eps).
  """
  mean = jnp.einsum("bnm,bmd->bnd", attn, fs)
  second = jnp.einsum("bnm,bmd->bnd", attn, jnp.square(fs))
  return mean, jnp.sqrt(jax.nn.relu(second - jnp.square(mean)) + eps)


def restyle(content, mean, std):
  """Re-styling of the normalized content: std * IN(Fa) + mean (all [B, Na, D])."""
  return std * content + mean


class SAN(nn.Module):
  """Similarity-aware normalization: re-styles Fa with the aligned statistics of Fs.

  Attributes:
    proj_dim: width d of the query / key projections (1x1 convolutions = per-position Dense).
    eps: added to the aligned variance before the square root.
    in_eps: added to the variance of the instance normalization.
  """

  proj_dim: int
  eps: float = 1e-5
  in_eps: float = 1e-5

  @nn.compact
  def __call__(self, fa, fs):
    """fa [B, Na, D], fs [B, Ns, D] -> (restyled [B, Na, D], attention [B, Na, Ns]), float32."""
    fa, fs = fa.astype(jnp.float32), fs.astype(jnp.float32)
    na, ns = instance_norm(fa, self.in_eps), instance_norm(fs, self.in_eps)
    dense = lambda name: nn.Dense(
      self.proj_dim,
      kernel_init=_p(_dense_init, "embed", "mlp"),
      bias_init=_p(_zeros, "mlp"),
      name=name,
    )
    attn = attention(dense("query")(na), dense("key")(ns))
    mean, std = aligned_stats(attn, fs, self.eps)
    return restyle(na, mean, std), attn


# ----------------------------------------------------------------------------- decoder
def upsample2x(x):
  """Nearest-neighbour x2 upsampling: [B, h, w, C] -> [B, 2h, 2w, C]."""
  b, h, w, c = x.shape
  x = jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c))
  return x.reshape(b, 2 * h, 2 * w, c)


class Decoder(nn.Module):
  """Upsampling convolutional generator: feature map [B, h, w, D] -> image [B, H, W, 3] in [-1, 1].

  The map is first brought to the base grid (H / 2^k, W / 2^k): each position is projected to
  `r = base_h // h` stacked rows of `width` channels (a 1-high CNN sequence becomes a
  base_h-high map; a ViT grid of the base height keeps its rows), then resized bilinearly
  where the grid still differs (e.g. the CNN's W / 4 + 1 columns). Then k stages of
  [nearest x2 upsampling -> conv3x3 -> ReLU -> conv3x3 -> ReLU], halving the width each
  stage (at least 16), and a conv3x3 to RGB with tanh. No normalization layers (ours): a
  normalization would remove again the style statistics SAN injected.

  Attributes:
    out_size: (H, W) of the restored patch.
    width: channels at the base grid.
    num_upsamples: k.
  """

  out_size: tuple[int, int]
  width: int = 128
  num_upsamples: int = 2

  @nn.compact
  def __call__(self, x):
    b, h, w, _ = x.shape
    k = self.num_upsamples
    base_h, base_w = self.out_size[0] // 2**k, self.out_size[1] // 2**k
    if base_h * 2**k != self.out_size[0] or base_w * 2**k != self.out_size[1]:
      raise ValueError(f"out_size {self.out_size} is not divisible by 2^{k}")
    r = max(base_h // h, 1)
    x = nn.Dense(
      r * self.width,
      kernel_init=_p(_dense_init, "embed", "mlp"),
      bias_init=_p(_zeros, "mlp"),
      name="to_grid",
    )(x.astype(jnp.float32))
    x = x.reshape(b, h, w, r, self.width).transpose(0, 1, 3, 2, 4).reshape(b, h * r, w, -1)
    if x.shape[1:3] != (base_h, base_w):
      x = jax.image.resize(x, (b, base_h, base_w, self.width), "bilinear")
    x = nn.relu(x)
    c = self.width
    for i in range(k):
      c = max(c // 2, 16)
      x = upsample2x(x)
      x = nn.relu(_conv(c, 3, name=f"up{i}_conv0")(x))
      x = nn.relu(_conv(c, 3, name=f"up{i}_conv1")(x))
    return jnp.tanh(_conv(3, 3, name="to_rgb")(x))


# ----------------------------------------------------------------------------- discriminator
class Discriminator(nn.Module):
  """PatchGAN discriminator (pix2pix style, ours for 32-high patches).

  conv4x4/2 (width) -> LReLU, then num_layers - 1 x [conv4x4/2 (2x width) -> norm -> LReLU],
  conv4x4/1 -> norm -> LReLU, conv4x4/1 -> 1 logit per patch.
  `images [B, H, W, 3]` in [-1, 1] -> logits `[B, H / 2^n, W / 2^n, 1]` (n = num_layers).

  Attributes:
    width: channels of the first layer.
    num_layers: stride-2 convolutions n (2: 8 x 16 logits for 32 x 64, receptive field 34 px).
    norm: "instance" | "none" (no BatchNorm: the discriminator keeps no state).
  """

  width: int = 64
  num_layers: int = 2
  norm: str = "instance"

  @nn.compact
  def __call__(self, images):
    if self.norm not in ("instance", "none"):
      raise ValueError(f"disc_norm={self.norm!r} is unknown; valid: instance, none")

    def norm(x, name):
      if self.norm == "none":
        return x
      return nn.GroupNorm(
        num_groups=None,
        group_size=1,
        epsilon=1e-5,
        scale_init=_p(nn.initializers.ones, "conv_out"),
        bias_init=_p(_zeros, "conv_out"),
        name=name,
      )(x)

    x = nn.leaky_relu(_conv(self.width, 4, 2, name="conv0")(images.astype(jnp.float32)), 0.2)
    c = self.width
    for i in range(1, self.num_layers):
      c = min(c * 2, 8 * self.width)
      x = nn.leaky_relu(norm(_conv(c, 4, 2, name=f"conv{i}")(x), f"norm{i}"), 0.2)
    c = min(c * 2, 8 * self.width)
    x = nn.leaky_relu(norm(_conv(c, 4, 1, name=f"conv{self.num_layers}")(x), "norm_last"), 0.2)
    return _conv(1, 4, 1, name="logits")(x)

r"""CNN (+TPS) + BiLSTM text-line encoder of the "What is wrong with scene text recognition"
family (Baek et al., ICCV 2019; clovaai/deep-text-recognition-benchmark), flax linen.

    images [B, 32, 128, 3] in [-1, 1]
      -> [TPS rectification, optional]         [B, 32, 128, 3]
      -> ResNet feature extractor               [B, 1, T, C]   (height collapsed to 1)
      -> average over the height                [B, T, C]      T = W / 4 + 1 = 33 for W = 128
      -> BiLSTM x lstm_layers (optional)        [B, T, lstm_hidden]

`T = W // 4 + 1`: the clovaai ResNet (layers [1, 2, 5, 3]) is kept exactly, padding included:
maxpool3 (k2, s(2,1), pad (0,1)) and conv4_1 (k2, s(2,1), pad (0,1)) each add a column and
conv4_2 (k2, valid) removes one, so 32x100 gives the usual 26 frames and 32x128 gives 33
(not 32). The encoder registry (models/encoders.py) reports `grid_h = 1`: the T frames are the
sequence a CTC/attention decoder reads, left to right.

Channels scale with `channels` (C, 512 in the paper): stem C/16, C/8; stages C/4, C/2, C, C.

Param tree and the clovaai PyTorch names it maps onto (`Transformation.*`,
`FeatureExtraction.ConvNet.*`, `SequenceModeling.*`):

    tps/loc_conv_{i}/kernel, tps/loc_bn_{i}     <- LocalizationNetwork.conv.{4i, 4i+1} (i = 0..3)
    tps/loc_fc1/{kernel,bias}                   <- LocalizationNetwork.localization_fc1.0
    tps/loc_fc2/{kernel,bias}                   <- LocalizationNetwork.localization_fc2
    cnn/conv0_1, cnn/bn0_1, cnn/conv0_2, ...    <- ConvNet.conv0_1, ConvNet.bn0_1, ... (same names)
    cnn/layer{s}_{j}/{conv1,bn1,conv2,bn2}      <- ConvNet.layer{s}.{j}.{conv1,bn1,conv2,bn2}
    cnn/layer{s}_0/{downsample_conv,downsample_bn} <- ConvNet.layer{s}.0.downsample.{0,1}
    lstm_{l}/{forward,backward}/i{g}/kernel [in, H] <- SequenceModeling.l.rnn.weight_ih_l0
        (gate g in i, f, g, o = PyTorch's row blocks; `_reverse` for backward), transposed
    lstm_{l}/{forward,backward}/h{g}/{kernel [H, H], bias [H]} <- weight_hh_l0 (transposed),
        bias_ih_l0 + bias_hh_l0 (flax has one bias per gate)
    lstm_{l}/linear/{kernel [2H, H], bias}      <- SequenceModeling.l.linear
    batch_stats: .../bn*/{mean,var}             <- running_{mean,var}

Conv kernels carry logical axes (None, None, "conv_in", "conv_out"), BatchNorm scale/bias
("conv_out",), LSTM and dense kernels ("embed", "mlp") / ("mlp", "embed").

BatchNorm (PyTorch momentum 0.1 == flax momentum 0.9, eps 1e-5): `train=True` normalises with
the statistics of the (global) batch and updates the running averages, so it must be applied
with `mutable=["batch_stats"]`; `train=False` uses the running averages and changes nothing:

    variables = encoder.init(rng, images)                 # {"params", "batch_stats"}
    feats, upd = encoder.apply(variables, images, train=True, mutable=["batch_stats"])
    feats = encoder.apply({"params": p, "batch_stats": upd["batch_stats"]}, images)  # eval

Under `jax.jit` with a batch sharded over the mesh, XLA computes the statistics across devices
(no `axis_name`).
"""

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from sslocr_jax.models import encoders

_conv_init = nn.initializers.he_normal()  # clovaai: kaiming_normal_ on every weight
_dense_init = nn.initializers.he_normal()
_zeros = nn.initializers.zeros
_ones = nn.initializers.ones
_BN = dict(momentum=0.9, epsilon=1e-5)


def _p(init, *names):
  return nn.with_logical_partitioning(init, names)


def num_frames(width: int) -> int:
  """Frames T of the ResNet for an input width W: W // 4 + 1 (33 for 128, 26 for 100)."""
  return width // 4 + 1


def _conv(features, kernel, strides=1, padding="SAME", name=None, dtype=jnp.float32):
  return nn.Conv(
    features,
    kernel,
    strides=strides,
    padding=padding,
    use_bias=False,
    dtype=dtype,
    param_dtype=jnp.float32,
    kernel_init=_p(_conv_init, None, None, "conv_in", "conv_out"),
    name=name,
  )


def _bn(train, name, dtype=jnp.float32):
  return nn.BatchNorm(
    use_running_average=not train,
    dtype=dtype,
    param_dtype=jnp.float32,
    scale_init=_p(_ones, "conv_out"),
    bias_init=_p(_zeros, "conv_out"),
    name=name,
    **_BN,
  )


class BasicBlock(nn.Module):
  """ResNet basic block: conv3x3-BN-ReLU-conv3x3-BN (+ 1x1 conv-BN shortcut when the width
  changes) -> ReLU. `x [B, H, W, Cin]` -> `[B, H, W, planes]`."""

  planes: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, train: bool):
    residual = x
    y = _conv(self.planes, (3, 3), name="conv1", dtype=self.dtype)(x)
    y = nn.relu(_bn(train, "bn1", self.dtype)(y))
    y = _conv(self.planes, (3, 3), name="conv2", dtype=self.dtype)(y)
    y = _bn(train, "bn2", self.dtype)(y)
    if x.shape[-1] != self.planes:
      residual = _conv(self.planes, (1, 1), name="downsample_conv", dtype=self.dtype)(x)
      residual = _bn(train, "downsample_bn", self.dtype)(residual)
    return nn.relu(y + residual)


class ResNetFeatures(nn.Module):
  """clovaai `ResNet_FeatureExtractor` (ResNet with `blocks` per stage, [1, 2, 5, 3]).

  `x [B, 32, W, Cin]` -> `[B, 1, W // 4 + 1, channels]`.
  """

  channels: int = 512
  blocks: Sequence[int] = (1, 2, 5, 3)
  dtype: Any = jnp.float32
  remat: str = "none"  # per basic block: none | full (save_dots = full: convs are not dots)

  @nn.compact
  def __call__(self, x, train: bool):
    c = self.channels
    widths = (c // 4, c // 2, c, c)

    def conv_bn_relu(x, features, name, kernel=(3, 3), strides=1, padding="SAME"):
      x = _conv(features, kernel, strides, padding, name=f"conv{name}", dtype=self.dtype)(x)
      return nn.relu(_bn(train, f"bn{name}", self.dtype)(x))

    def layer(x, stage):
      for j in range(self.blocks[stage]):
        block = encoders.remat_block(BasicBlock, self.remat)
        x = block(widths[stage], self.dtype, name=f"layer{stage + 1}_{j}")(x, train)
      return x

    x = conv_bn_relu(x, c // 16, "0_1")
    x = conv_bn_relu(x, c // 8, "0_2")
    x = nn.max_pool(x, (2, 2), strides=(2, 2))  # H/2, W/2
    x = conv_bn_relu(layer(x, 0), widths[0], "1")
    x = nn.max_pool(x, (2, 2), strides=(2, 2))  # H/4, W/4
    x = conv_bn_relu(layer(x, 1), widths[1], "2")
    x = nn.max_pool(x, (2, 2), strides=(2, 1), padding=((0, 0), (1, 1)))  # H/8, W/4 + 1
    x = conv_bn_relu(layer(x, 2), widths[2], "3")
    x = layer(x, 3)
    x = conv_bn_relu(x, widths[3], "4_1", (2, 2), (2, 1), ((0, 0), (1, 1)))  # H/16, W/4 + 2
    return conv_bn_relu(x, widths[3], "4_2", (2, 2), 1, "VALID")  # H/16 - 1, W/4 + 1


# ----------------------------------------------------------------------------- TPS
def fiducials(num_fiducials: int) -> np.ndarray:
  """Base fiducial points C `[F, 2]` (x, y) in [-1, 1]: F/2 along the top edge, F/2 along
  the bottom edge (clovaai `_build_C`)."""
  x = np.linspace(-1.0, 1.0, num_fiducials // 2)
  top = np.stack([x, -np.ones_like(x)], axis=1)
  bottom = np.stack([x, np.ones_like(x)], axis=1)
  return np.concatenate([top, bottom], axis=0)


def tps_grid_matrix(num_fiducials: int, height: int, width: int) -> np.ndarray:
  """Constant `[H * W, F]` matrix M with `grid = M @ C'` for predicted fiducials C' `[F, 2]`.

  Thin-plate spline through (C -> C'): T = inv(delta_C) @ [C'; 0]; grid = P_hat @ T, with
  P the pixel centres of the output in [-1, 1] (row-major) and P_hat = [1, P, U(|P - C|)],
  U(r) = r^2 log r (clovaai GridGenerator). Only the first F columns of inv(delta_C) matter
  since the last 3 rows of [C'; 0] are zero. Computed in float64.
  """
  f = num_fiducials
  c = fiducials(f)
  r = np.linalg.norm(c[:, None] - c[None], axis=-1)
  np.fill_diagonal(r, 1.0)
  hat_c = r**2 * np.log(r)
  delta = np.concatenate(
    [
      np.concatenate([np.ones((f, 1)), c, hat_c], axis=1),
      np.concatenate([np.zeros((2, 3)), c.T], axis=1),
      np.concatenate([np.zeros((1, 3)), np.ones((1, f))], axis=1),
    ],
    axis=0,
  )  # [F+3, F+3]
  inv_delta = np.linalg.inv(delta)
  gx = (np.arange(-width, width, 2) + 1.0) / width
  gy = (np.arange(-height, height, 2) + 1.0) / height
  p = np.stack(np.meshgrid(gx, gy), axis=2).reshape(-1, 2)  # [H*W, 2] (x, y)
  rbf = np.linalg.norm(p[:, None] - c[None], axis=-1)
  rbf = rbf**2 * np.log(rbf + 1e-6)
  p_hat = np.concatenate([np.ones((p.shape[0], 1)), p, rbf], axis=1)  # [H*W, F+3]
  return (p_hat @ inv_delta)[:, :f].astype(np.float32)


def grid_sample(images, grid):
  """Bilinear sampling with border padding (PyTorch `grid_sample`, align_corners=False).

  images `[B, H, W, C]`; grid `[B, Ho, Wo, 2]` of (x, y) in [-1, 1] (-1 = left/top edge of the
  first pixel) -> `[B, Ho, Wo, C]`. Differentiable in the grid.
  """
  b, h, w, c = images.shape
  _, ho, wo, _ = grid.shape
  x = jnp.clip(((grid[..., 0] + 1.0) * w - 1.0) / 2.0, 0.0, w - 1.0).reshape(b, -1)
  y = jnp.clip(((grid[..., 1] + 1.0) * h - 1.0) / 2.0, 0.0, h - 1.0).reshape(b, -1)
  x0, y0 = jnp.floor(x), jnp.floor(y)
  wx, wy = (x - x0)[..., None], (y - y0)[..., None]
  x0, y0 = x0.astype(jnp.int32), y0.astype(jnp.int32)
  x1, y1 = jnp.minimum(x0 + 1, w - 1), jnp.minimum(y0 + 1, h - 1)
  flat = images.reshape(b, h * w, c)
  at = lambda yy, xx: jnp.take_along_axis(flat, (yy * w + xx)[..., None], axis=1)
  out = (1 - wy) * ((1 - wx) * at(y0, x0) + wx * at(y0, x1)) + wy * (
    (1 - wx) * at(y1, x0) + wx * at(y1, x1)
  )
  return out.reshape(b, ho, wo, c).astype(images.dtype)


class TPS(nn.Module):
  """TPS rectification (clovaai `TPS_SpatialTransformerNetwork`), output the input's size.

  A localization CNN (4 conv-BN-ReLU, widths C/8..C, max-pools, global average pool,
  FC 256 + ReLU, FC 2F) predicts F fiducial points C' `[B, F, 2]`; the thin-plate spline
  C -> C' gives a sampling grid; the image is resampled bilinearly (border padding).
  `loc_fc2` starts with a zero kernel and the base fiducials as bias, so at initialisation
  C' = C and the rectified image equals the input (exactly: pixel-centre grid with
  align_corners=False sampling; clovaai's align_corners=True resamples it slightly).

  `images [B, H, W, 3]` -> `[B, H, W, 3]`.
  """

  num_fiducials: int = 20
  channels: int = 512
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images, train: bool):
    b, h, w, _ = images.shape
    x = images
    c = self.channels
    for i, width in enumerate((c // 8, c // 4, c // 2, c)):
      x = _conv(width, (3, 3), name=f"loc_conv_{i}", dtype=self.dtype)(x)
      x = nn.relu(_bn(train, f"loc_bn_{i}", self.dtype)(x))
      if i < 3:
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = x.astype(jnp.float32).mean(axis=(1, 2))  # [B, C]
    x = nn.relu(
      nn.Dense(
        256,
        dtype=jnp.float32,
        param_dtype=jnp.float32,
        kernel_init=_p(_dense_init, "embed", "mlp"),
        bias_init=_p(_zeros, "mlp"),
        name="loc_fc1",
      )(x)
    )
    base = jnp.asarray(fiducials(self.num_fiducials).reshape(-1), jnp.float32)
    pts = nn.Dense(
      2 * self.num_fiducials,
      dtype=jnp.float32,
      param_dtype=jnp.float32,
      kernel_init=_p(_zeros, "mlp", None),
      bias_init=_p(lambda *_: base, None),
      name="loc_fc2",
    )(x)
    pts = pts.reshape(b, self.num_fiducials, 2)
    m = jnp.asarray(tps_grid_matrix(self.num_fiducials, h, w))  # [H*W, F]
    grid = jnp.einsum("nf,bfk->bnk", m, pts).reshape(b, h, w, 2)
    return grid_sample(images, grid)


# ----------------------------------------------------------------------------- BiLSTM
class BiLSTM(nn.Module):
  """clovaai `BidirectionalLSTM`: bidirectional LSTM (hidden H per direction) + Linear(2H -> out).

  `x [B, T, Din]` -> `[B, T, out_dim]` (out_dim defaults to H).
  """

  hidden: int = 256
  out_dim: int | None = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    cell = lambda name: nn.OptimizedLSTMCell(
      self.hidden,
      dtype=self.dtype,
      param_dtype=jnp.float32,
      kernel_init=_p(nn.initializers.lecun_normal(), "embed", "mlp"),
      recurrent_kernel_init=_p(nn.initializers.orthogonal(), None, "mlp"),
      bias_init=_p(_zeros, "mlp"),
      name=name,
    )
    x = nn.Bidirectional(nn.RNN(cell("forward")), nn.RNN(cell("backward")))(x.astype(self.dtype))
    return nn.Dense(
      self.out_dim or self.hidden,
      dtype=self.dtype,
      param_dtype=jnp.float32,
      kernel_init=_p(nn.initializers.lecun_normal(), "mlp", "embed"),
      bias_init=_p(_zeros, "embed"),
      name="linear",
    )(x)


# ----------------------------------------------------------------------------- encoder
# The paper size (SeqCLR / SimAN use the clovaai TPS-ResNet-BiLSTM: 512 output channels, blocks
# (1, 2, 5, 3), two BiLSTMs of 256; clovaai/deep-text-recognition-benchmark
# modules/feature_extraction.py ResNet_FeatureExtractor). Configs take it through
# config_utils.resnet_model; their cpu/smoke variants narrow it.
SIZE = dict(
  channels=512,
  blocks=(1, 2, 5, 3),
  lstm_hidden=256,
  lstm_layers=2,
  num_fiducials=20,
  tps_channels=512,
)


class Encoder(nn.Module):
  """[TPS ->] ResNet -> height average -> [BiLSTM x lstm_layers].

  Attributes:
    channels: ResNet output width C (512 in the paper).
    blocks: basic blocks per stage ((1, 2, 5, 3) in the paper).
    lstm_hidden: BiLSTM hidden size per direction and output width (256).
    lstm_layers: number of BiLSTM layers (2; 0 = CNN features only, width C).
    tps: TPS rectification in front.
    num_fiducials: TPS fiducial points F (20).
    tps_channels: width of the TPS localization CNN's last conv (512).
    dtype: compute dtype (params and BatchNorm statistics stay float32).
    remat: rematerialisation policy of each ResNet basic block (`encoders.REMAT_POLICIES`).
  """

  channels: int = 512
  blocks: Sequence[int] = (1, 2, 5, 3)
  lstm_hidden: int = 256
  lstm_layers: int = 2
  tps: bool = False
  num_fiducials: int = 20
  tps_channels: int = 512
  dtype: Any = jnp.float32
  remat: str = "none"

  @property
  def features_dim(self) -> int:
    return self.lstm_hidden if self.lstm_layers else self.channels

  @nn.compact
  def __call__(self, images, mask=None, *, train: bool = False):
    """images `[B, H, W, 3]` in [-1, 1] (mask: ignored, for the ViT's signature)
    -> frames `[B, W // 4 + 1, features_dim]` in `dtype`.

    With `train=True` call `apply(..., mutable=["batch_stats"])`. The TPS output is sown as
    `intermediates/rectified` (`mutable=["intermediates"]` to read it).
    """
    del mask
    x = images.astype(self.dtype)
    if self.tps:
      x = TPS(self.num_fiducials, self.tps_channels, self.dtype, name="tps")(x, train)
      self.sow("intermediates", "rectified", x)
    x = ResNetFeatures(self.channels, tuple(self.blocks), self.dtype, self.remat, name="cnn")(
      x, train
    )
    x = x.mean(axis=1)  # [B, T, C]: AdaptiveAvgPool over the (already 1-high) height
    for l in range(self.lstm_layers):
      x = BiLSTM(self.lstm_hidden, dtype=self.dtype, name=f"lstm_{l}")(x)
    return x


def from_config(config) -> Encoder:
  """`Encoder` from `config.model` (fields as in the class; missing ones take the defaults)
  and `config.dtype`."""
  m = config.model
  return Encoder(
    channels=int(m.get("channels", 512)),
    blocks=tuple(m.get("blocks", (1, 2, 5, 3))),
    lstm_hidden=int(m.get("lstm_hidden", 256)),
    lstm_layers=int(m.get("lstm_layers", 2)),
    tps=bool(m.get("tps", False)),
    num_fiducials=int(m.get("num_fiducials", 20)),
    tps_channels=int(m.get("tps_channels", 512)),
    dtype=encoders.compute_dtype(config),
    remat=encoders.remat_name(m.get("remat", "none")),
  )


class BiLSTMStack(nn.Module):
  """`layers` BiLSTMs on a frame sequence: `[B, T, Din]` -> `[B, T, hidden]`.

  SeqCLR's sequence-modelling stage on its own: when the pretrained base encoder is the CNN
  alone (`seqclr_encoder_stage=cnn`), the BiLSTM belongs to the decoder and is trained with it
  (Aberdam et al., CVPR 2021, Sec. 4; configs/finetune.py `decoder_bilstm_layers`). Param
  names `lstm_{l}` as in `Encoder`.
  """

  hidden: int = 256
  layers: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    for l in range(self.layers):
      x = BiLSTM(self.hidden, dtype=self.dtype, name=f"lstm_{l}")(x)
    return x

"""Plain PyTorch modules that load the exported state dicts with `strict=True`.

Needs only torch and numpy (no JAX): `pip install "sslocr_jax[torch]"`.

    import json, torch
    from safetensors.torch import load_file
    from sslocr_jax.export import torch_modules
    model = torch_modules.build(json.load(open("model.json"))).eval()
    model.load_state_dict(load_file("model.safetensors"), strict=True)

Images are NCHW float in [-1, 1] (`uint8 / 127.5 - 1`), 32 x 128 by default.

`build(model_config)` returns, from the JSON written beside the weights:
  include="encoder"        `ViTEncoder` or the [TPS +] CNN + BiLSTM `ResNetEncoder` (keys
                           `encoder.*`, wrapped in `EncoderOnly`);
  method dig, "all"        `DiGPretrain`: encoder, momentum_encoder, pix_decoder, pix_projector,
                           pix_projector_m, encoder_projection_layer, momentum_projection_layer,
                           predictor (the official DiG names);
  method recognition       `Recognizer`: encoder + [linear_norm] + decoder (ctc, attention,
                           transformer) with `forward(images) -> (ids [B, L], logits)` greedy
                           decoding and `logits(images, inputs)` teacher forcing. With
                           `decoder_config.style == "dig"` it is the official DiG fine-tuned
                           `RecModel` layout (`DigTFDecoder`, ViT with its final `norm`), so
                           an official fine-tuned state dict loads with strict=True.

ViT numerics follow the official DiG encoder: 4x4 stride-4 patch conv, row-major tokens,
mask token before the fixed sin-cos position table, BEiT attention (qkv without bias +
q_bias / v_bias), exact GELU, LayerNorm eps 1e-6, no class token, no final norm.
"""

import math

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

from sslocr_jax import posembed  # numpy only


# ----------------------------------------------------------------------------- ViT
class PatchEmbed(nn.Module):
  def __init__(self, embed_dim, patch_size=4, in_chans=3):
    super().__init__()
    self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, patch_size)

  def forward(self, x):  # [B, 3, H, W] -> [B, (H/p)(W/p), D], token = row * W/p + col
    return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
  def __init__(self, dim, num_heads):
    super().__init__()
    self.num_heads = num_heads
    self.scale = (dim // num_heads) ** -0.5
    self.qkv = nn.Linear(dim, 3 * dim, bias=False)
    self.q_bias = nn.Parameter(torch.zeros(dim))
    self.v_bias = nn.Parameter(torch.zeros(dim))
    self.proj = nn.Linear(dim, dim)

  def forward(self, x):
    b, n, d = x.shape
    bias = torch.cat([self.q_bias, torch.zeros_like(self.v_bias), self.v_bias])
    qkv = F.linear(x, self.qkv.weight, bias).reshape(b, n, 3, self.num_heads, -1)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
    return self.proj((attn @ v).transpose(1, 2).reshape(b, n, d))


class Mlp(nn.Module):
  def __init__(self, dim, hidden):
    super().__init__()
    self.fc1 = nn.Linear(dim, hidden)
    self.act = nn.GELU()
    self.fc2 = nn.Linear(hidden, dim)

  def forward(self, x):
    return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
  def __init__(self, dim, num_heads, mlp_ratio=4.0):
    super().__init__()
    self.norm1 = nn.LayerNorm(dim, eps=1e-6)
    self.attn = Attention(dim, num_heads)
    self.norm2 = nn.LayerNorm(dim, eps=1e-6)
    self.mlp = Mlp(dim, int(dim * mlp_ratio))

  def forward(self, x):
    x = x + self.attn(self.norm1(x))
    return x + self.mlp(self.norm2(x))


class ViTEncoder(nn.Module):
  """DiG ViT: `forward(images [B, 3, H, W], mask bool [B, N] or None) -> [B, N, D]`.

  `final_norm`: the fine-tuned release's last LayerNorm (`norm`, eps 1e-6; pretraining
  replaces it by an identity).
  """

  def __init__(
    self,
    embed_dim,
    depth,
    num_heads,
    mlp_ratio=4.0,
    patch_size=4,
    image_size=(32, 128),
    final_norm=False,
  ):
    super().__init__()
    self.patch_embed = PatchEmbed(embed_dim, patch_size)
    self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
    n = (image_size[0] // patch_size) * (image_size[1] // patch_size)
    self.register_buffer(
      "pos_table", torch.from_numpy(posembed.sincos_1d(n, embed_dim))[None], persistent=False
    )
    self.blocks = nn.ModuleList([Block(embed_dim, num_heads, mlp_ratio) for _ in range(depth)])
    self.norm = nn.LayerNorm(embed_dim, eps=1e-6) if final_norm else nn.Identity()
    self.grid_h = image_size[0] // patch_size

  def forward(self, images, mask=None):
    x = self.patch_embed(images)
    if mask is not None:
      m = mask[..., None].to(x.dtype)
      x = x * (1 - m) + self.mask_token * m
    x = x + self.pos_table
    for blk in self.blocks:
      x = blk(x)
    return self.norm(x)


# ----------------------------------------------------------------------------- DiG heads
def build_mlp(num_layers, input_dim, mlp_dim, output_dim, last_bn=True):
  """MoCo v3 / DiG `_build_mlp`: [Linear(no bias), BN, ReLU] * (L-1), Linear, [BN no affine]."""
  layers = []
  for l in range(num_layers):
    dim1 = input_dim if l == 0 else mlp_dim
    dim2 = output_dim if l == num_layers - 1 else mlp_dim
    layers.append(nn.Linear(dim1, dim2, bias=False))
    if l < num_layers - 1:
      layers += [nn.BatchNorm1d(dim2), nn.ReLU(inplace=True)]
    elif last_bn:
      layers.append(nn.BatchNorm1d(dim2, affine=False))
  return nn.Sequential(*layers)


def mim_head(embed_dim, hidden=192, patch_pixels=48):
  """DiG `pix_decoder`: Linear, Linear, LayerNorm, GELU, Linear -> [..., 48] (p1 p2 c)."""
  return nn.Sequential(
    nn.Linear(embed_dim, hidden, bias=False),
    nn.Linear(hidden, hidden, bias=False),
    nn.LayerNorm(hidden, eps=1e-6),
    nn.GELU(),
    nn.Linear(hidden, patch_pixels),
  )


class DiGPretrain(nn.Module):
  """Container of every DiG pretraining network under the official names (no loss)."""

  def __init__(
    self,
    encoder_kwargs,
    mim_hidden_dim=192,
    pix_hidden_dim=512,
    proj_hidden_dim=4096,
    proj_dim=256,
    pred_hidden_dim=4096,
  ):
    super().__init__()
    d = encoder_kwargs["embed_dim"]
    self.encoder = ViTEncoder(**encoder_kwargs)
    self.momentum_encoder = ViTEncoder(**encoder_kwargs)
    self.pix_decoder = mim_head(d, mim_hidden_dim, 48)
    self.pix_projector = build_mlp(3, d, pix_hidden_dim, d)
    self.pix_projector_m = build_mlp(3, d, pix_hidden_dim, d)
    self.encoder_projection_layer = build_mlp(3, d, proj_hidden_dim, proj_dim)
    self.momentum_projection_layer = build_mlp(3, d, proj_hidden_dim, proj_dim)
    self.predictor = build_mlp(2, proj_dim, pred_hidden_dim, proj_dim)

  def forward(self, images, mask=None):
    """Encoder tokens and their SimMIM reconstruction: ([B, N, D], [B, N, 48])."""
    tokens = self.encoder(images, mask)
    return tokens, self.pix_decoder(tokens)


class EncoderOnly(nn.Module):
  """`encoder.*` keys only: `forward(images, mask=None) -> features [B, N, D]`."""

  def __init__(self, encoder):
    super().__init__()
    self.encoder = encoder

  def forward(self, images, mask=None):
    return self.encoder(images, mask)


# ----------------------------------------------------------------------------- CNN+BiLSTM
class BasicBlock(nn.Module):
  def __init__(self, inplanes, planes):
    super().__init__()
    self.conv1 = nn.Conv2d(inplanes, planes, 3, 1, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.downsample = None
    if inplanes != planes:
      self.downsample = nn.Sequential(
        nn.Conv2d(inplanes, planes, 1, 1, bias=False), nn.BatchNorm2d(planes)
      )

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    r = x if self.downsample is None else self.downsample(x)
    return F.relu(y + r)


class ConvNet(nn.Module):
  """clovaai `ResNet` of `ResNet_FeatureExtractor` ([B, 3, 32, W] -> [B, C, 1, W // 4 + 1])."""

  def __init__(self, channels=512, blocks=(1, 2, 5, 3)):
    super().__init__()
    c = channels
    widths = (c // 4, c // 2, c, c)
    self.conv0_1 = nn.Conv2d(3, c // 16, 3, 1, 1, bias=False)
    self.bn0_1 = nn.BatchNorm2d(c // 16)
    self.conv0_2 = nn.Conv2d(c // 16, c // 8, 3, 1, 1, bias=False)
    self.bn0_2 = nn.BatchNorm2d(c // 8)
    inplanes = c // 8
    for s in range(4):
      layer = []
      for _ in range(blocks[s]):
        layer.append(BasicBlock(inplanes, widths[s]))
        inplanes = widths[s]
      setattr(self, f"layer{s + 1}", nn.Sequential(*layer))
    self.conv1 = nn.Conv2d(widths[0], widths[0], 3, 1, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(widths[0])
    self.conv2 = nn.Conv2d(widths[1], widths[1], 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(widths[1])
    self.conv3 = nn.Conv2d(widths[2], widths[2], 3, 1, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(widths[2])
    self.conv4_1 = nn.Conv2d(widths[3], widths[3], 2, (2, 1), (0, 1), bias=False)
    self.bn4_1 = nn.BatchNorm2d(widths[3])
    self.conv4_2 = nn.Conv2d(widths[3], widths[3], 2, 1, 0, bias=False)
    self.bn4_2 = nn.BatchNorm2d(widths[3])

  def forward(self, x):
    cbr = lambda x, n: F.relu(getattr(self, f"bn{n}")(getattr(self, f"conv{n}")(x)))
    x = cbr(cbr(x, "0_1"), "0_2")
    x = F.max_pool2d(x, 2, 2)
    x = cbr(self.layer1(x), "1")
    x = F.max_pool2d(x, 2, 2)
    x = cbr(self.layer2(x), "2")
    x = F.max_pool2d(x, 2, (2, 1), (0, 1))
    x = cbr(self.layer3(x), "3")
    x = self.layer4(x)
    x = cbr(x, "4_1")
    return cbr(x, "4_2")


class FeatureExtraction(nn.Module):
  def __init__(self, channels, blocks):
    super().__init__()
    self.ConvNet = ConvNet(channels, blocks)  # pylint: disable=invalid-name


class BidirectionalLSTM(nn.Module):
  def __init__(self, input_size, hidden, output_size):
    super().__init__()
    self.rnn = nn.LSTM(input_size, hidden, bidirectional=True, batch_first=True)
    self.linear = nn.Linear(2 * hidden, output_size)

  def forward(self, x):
    return self.linear(self.rnn(x)[0])


def tps_grid_matrix(num_fiducials: int, height: int, width: int) -> np.ndarray:
  """`[H * W, F]`: grid = M @ C' (models/resnet.py `tps_grid_matrix`, float64 -> float32)."""
  f = num_fiducials
  x = np.linspace(-1.0, 1.0, f // 2)
  c = np.concatenate([np.stack([x, -np.ones_like(x)], 1), np.stack([x, np.ones_like(x)], 1)])
  r = np.linalg.norm(c[:, None] - c[None], axis=-1)
  np.fill_diagonal(r, 1.0)
  delta = np.concatenate(
    [
      np.concatenate([np.ones((f, 1)), c, r**2 * np.log(r)], axis=1),
      np.concatenate([np.zeros((2, 3)), c.T], axis=1),
      np.concatenate([np.zeros((1, 3)), np.ones((1, f))], axis=1),
    ],
    axis=0,
  )
  gx = (np.arange(-width, width, 2) + 1.0) / width
  gy = (np.arange(-height, height, 2) + 1.0) / height
  p = np.stack(np.meshgrid(gx, gy), axis=2).reshape(-1, 2)
  rbf = np.linalg.norm(p[:, None] - c[None], axis=-1)
  p_hat = np.concatenate([np.ones((p.shape[0], 1)), p, rbf**2 * np.log(rbf + 1e-6)], axis=1)
  return (p_hat @ np.linalg.inv(delta))[:, :f].astype(np.float32)


class LocalizationNetwork(nn.Module):
  """clovaai TPS localization CNN -> fiducial points C' [B, F, 2]."""

  def __init__(self, num_fiducials=20, channels=512):
    super().__init__()
    self.num_fiducials = num_fiducials
    layers, cin = [], 3
    for i, w in enumerate((channels // 8, channels // 4, channels // 2, channels)):
      layers += [
        nn.Conv2d(cin, w, 3, 1, 1, bias=False),
        nn.BatchNorm2d(w),
        nn.ReLU(True),
        nn.MaxPool2d(2, 2) if i < 3 else nn.AdaptiveAvgPool2d(1),
      ]
      cin = w
    self.conv = nn.Sequential(*layers)
    self.localization_fc1 = nn.Sequential(nn.Linear(channels, 256), nn.ReLU(True))
    self.localization_fc2 = nn.Linear(256, 2 * num_fiducials)

  def forward(self, x):
    b = x.shape[0]
    f = self.conv(x).view(b, -1)
    return self.localization_fc2(self.localization_fc1(f)).view(b, self.num_fiducials, 2)


class Transformation(nn.Module):
  """TPS rectification (bilinear, border padding, align_corners=False): same size out."""

  def __init__(self, num_fiducials, channels, image_size):
    super().__init__()
    self.LocalizationNetwork = LocalizationNetwork(num_fiducials, channels)  # pylint: disable=invalid-name
    self.register_buffer(
      "grid_matrix",
      torch.from_numpy(tps_grid_matrix(num_fiducials, image_size[0], image_size[1])),
      persistent=False,
    )

  def forward(self, images):
    b, _, h, w = images.shape
    grid = torch.einsum("nf,bfk->bnk", self.grid_matrix, self.LocalizationNetwork(images))
    return F.grid_sample(
      images, grid.reshape(b, h, w, 2), mode="bilinear", padding_mode="border", align_corners=False
    )


class ResNetEncoder(nn.Module):
  """CNN (+ BiLSTM) encoder: `forward(images [B, 3, 32, W]) -> frames [B, W // 4 + 1, D]`."""

  def __init__(
    self,
    channels=512,
    blocks=(1, 2, 5, 3),
    lstm_hidden=256,
    lstm_layers=2,
    tps=False,
    num_fiducials=20,
    tps_channels=512,
    image_size=(32, 128),
  ):
    super().__init__()
    if tps:
      self.Transformation = Transformation(  # pylint: disable=invalid-name
        num_fiducials, tps_channels, image_size
      )
    self.tps = tps
    self.FeatureExtraction = FeatureExtraction(channels, blocks)  # pylint: disable=invalid-name
    dims = [channels] + [lstm_hidden] * lstm_layers
    self.SequenceModeling = nn.ModuleList(  # pylint: disable=invalid-name
      [BidirectionalLSTM(dims[l], lstm_hidden, lstm_hidden) for l in range(lstm_layers)]
    )
    self.grid_h = 1

  def forward(self, images, mask=None):
    del mask
    if self.tps:
      images = self.Transformation(images)
    x = self.FeatureExtraction.ConvNet(images)  # [B, C, 1, T]
    x = x.mean(dim=2).transpose(1, 2)  # [B, T, C]
    for layer in self.SequenceModeling:
      x = layer(x)
    return x


# ----------------------------------------------------------------------------- decoders
def to_frames(features, grid_h):
  b, n, d = features.shape
  return features.reshape(b, grid_h, n // grid_h, d).mean(dim=1)


class CtcDecoder(nn.Module):
  """head "linear": one Linear; "dig": LayerNorm on the tokens, mean over the height, then
  Linear -> LayerNorm -> GELU -> Linear (models/decoders.py CtcDecoder). `center_frames`: the
  image's mean frame subtracted from each frame before the classifier."""

  def __init__(self, in_dim, num_classes, grid_h=1, head="linear", hidden_dim=512, center=False):
    super().__init__()
    self.grid_h, self.head, self.center = grid_h, head, center
    if head == "dig":
      self.encoder_norm = nn.LayerNorm(in_dim, eps=1e-6)
      self.ctc_classifier = nn.Sequential(
        nn.Linear(in_dim, hidden_dim),
        nn.LayerNorm(hidden_dim, eps=1e-6),
        nn.GELU(),
        nn.Linear(hidden_dim, num_classes),
      )
    else:
      self.classifier = nn.Linear(in_dim, num_classes)

  def frames(self, features):
    frames = to_frames(features, self.grid_h)
    return frames - frames.mean(dim=1, keepdim=True) if self.center else frames

  def forward(self, features):
    if self.head == "dig":
      return self.ctc_classifier(self.frames(self.encoder_norm(features)))
    return self.classifier(self.frames(features))


class AttentionCell(nn.Module):
  def __init__(self, in_dim, num_classes, hidden_dim, attention_dim):
    super().__init__()
    self.s_proj = nn.Linear(hidden_dim, attention_dim)
    self.score = nn.Linear(attention_dim, 1)
    self.tgt_embedding = nn.Embedding(num_classes + 1, attention_dim)
    self.gru = nn.GRUCell(attention_dim + in_dim, hidden_dim)
    self.fc = nn.Linear(hidden_dim, num_classes)

  def forward(self, x, x_proj, state, token):
    e = self.score(torch.tanh(x_proj + self.s_proj(state)[:, None]))[..., 0]
    alpha = e.softmax(dim=-1)
    context = torch.einsum("bt,btd->bd", alpha, x)
    state = self.gru(torch.cat([self.tgt_embedding(token), context], -1), state)
    return self.fc(state), state


class AttentionDecoder(nn.Module):
  """ASTER-style attention GRU over the frames (same math as models/decoders.py)."""

  def __init__(self, in_dim, num_classes, hidden_dim=512, attention_dim=512, grid_h=1):
    super().__init__()
    self.grid_h, self.hidden_dim = grid_h, hidden_dim
    self.x_proj = nn.Linear(in_dim, attention_dim)
    self.cell = AttentionCell(in_dim, num_classes, hidden_dim, attention_dim)

  def prepare(self, features):
    x = to_frames(features, self.grid_h)
    return {"x": x, "x_proj": self.x_proj(x), "state": x.new_zeros(x.shape[0], self.hidden_dim)}

  def step(self, memory, tokens):
    """tokens [B, t+1] (BOS first) -> logits [B, C] of the next token (state carried)."""
    logits, memory["state"] = self.cell(
      memory["x"], memory["x_proj"], memory["state"], tokens[:, -1]
    )
    return logits

  def forward(self, features, inputs):
    memory = self.prepare(features)
    return torch.stack([self.step(memory, inputs[:, : t + 1]) for t in range(inputs.shape[1])], 1)


class MultiHeadAttention(nn.Module):
  """Pre-norm: `x + fc(attn(w_qs(LN(x)), k, v))`."""

  def __init__(self, d_model, num_heads):
    super().__init__()
    self.num_heads = num_heads
    self.sqrt_head_dim = math.sqrt(d_model // num_heads)  # a constant when traced
    self.w_qs = nn.Linear(d_model, d_model, bias=False)
    self.w_ks = nn.Linear(d_model, d_model, bias=False)
    self.w_vs = nn.Linear(d_model, d_model, bias=False)
    self.fc = nn.Linear(d_model, d_model)
    self.layer_norm = nn.LayerNorm(d_model, eps=1e-6)

  def _split(self, x):
    return x.reshape(x.shape[0], x.shape[1], self.num_heads, -1).transpose(1, 2)

  def forward(self, x, kv_input=None, mask=None):
    y = self.layer_norm(x)
    src = y if kv_input is None else kv_input
    q, k, v = self._split(self.w_qs(y)), self._split(self.w_ks(src)), self._split(self.w_vs(src))
    logits = (q @ k.transpose(-2, -1)) / self.sqrt_head_dim
    if mask is not None:
      logits = logits.masked_fill(~mask, -1e9)
    out = (logits.softmax(-1) @ v).transpose(1, 2).reshape(x.shape)
    return x + self.fc(out)


class PositionwiseFeedForward(nn.Module):
  def __init__(self, d_model, d_inner):
    super().__init__()
    self.w_1 = nn.Linear(d_model, d_inner)
    self.w_2 = nn.Linear(d_inner, d_model)
    self.layer_norm = nn.LayerNorm(d_model, eps=1e-6)

  def forward(self, x):
    return x + self.w_2(F.relu(self.w_1(self.layer_norm(x))))


class DecoderLayer(nn.Module):
  def __init__(self, d_model, num_heads, d_inner):
    super().__init__()
    self.slf_attn = MultiHeadAttention(d_model, num_heads)
    self.enc_attn = MultiHeadAttention(d_model, num_heads)
    self.pos_ffn = PositionwiseFeedForward(d_model, d_inner)

  def forward(self, x, memory, mask):
    x = self.slf_attn(x, mask=mask)
    x = self.enc_attn(x, kv_input=memory)
    return self.pos_ffn(x)


class TransformerDecoder(nn.Module):
  """NRTR/DiG decoder (`decoder.*`); the `linear_norm` bridge lives in `Recognizer`."""

  def __init__(
    self, num_classes, d_model=512, num_layers=6, num_heads=8, mlp_dim=2048, max_positions=256
  ):
    super().__init__()
    self.d_model = d_model
    self.trg_word_emb = nn.Embedding(num_classes + 1, d_model)
    self.register_buffer(
      "pos_table", torch.from_numpy(posembed.sincos_1d(max_positions, d_model)), persistent=False
    )
    self.layer_stack = nn.ModuleList(
      [DecoderLayer(d_model, num_heads, mlp_dim) for _ in range(num_layers)]
    )
    self.layer_norm = nn.LayerNorm(d_model, eps=1e-6)
    self.classifier = nn.Linear(d_model, num_classes)

  def forward(self, memory, inputs):
    """memory [B, N, d] (after linear_norm), inputs [B, L] -> logits [B, L, C] (causal)."""
    n = inputs.shape[1]
    x = self.trg_word_emb(inputs) * math.sqrt(self.d_model) + self.pos_table[:n]
    mask = torch.ones(n, n, dtype=torch.bool, device=inputs.device).tril()
    for layer in self.layer_stack:
      x = layer(x, memory, mask)
    return self.classifier(self.layer_norm(x))


class DigAttention(nn.Module):
  """Official DiG `MultiHeadAttention`: `fc(attn(linear_q(q), linear_k(k), linear_v(v)))`,
  no biases, no residual, q.k scaled by head_dim^-0.5."""

  def __init__(self, d_model, num_heads):
    super().__init__()
    self.num_heads = num_heads
    self.scale = (d_model // num_heads) ** -0.5
    self.linear_q = nn.Linear(d_model, d_model, bias=False)
    self.linear_k = nn.Linear(d_model, d_model, bias=False)
    self.linear_v = nn.Linear(d_model, d_model, bias=False)
    self.fc = nn.Linear(d_model, d_model, bias=False)

  def _split(self, x):  # [B, L, d] -> [B, H, L, hd]
    return x.reshape(x.shape[0], x.shape[1], self.num_heads, -1).transpose(1, 2)

  def forward(self, q, kv, mask=None):
    q = self._split(self.linear_q(q))
    k, v = self._split(self.linear_k(kv)), self._split(self.linear_v(kv))
    logits = (q @ k.transpose(-2, -1)) * self.scale
    if mask is not None:
      logits = logits.masked_fill(~mask, float("-inf"))
    out = (logits.softmax(-1) @ v).transpose(1, 2)
    return self.fc(out.reshape(out.shape[0], out.shape[1], -1))


class DigFeedForward(nn.Module):
  def __init__(self, d_model, d_inner):
    super().__init__()
    self.w_1 = nn.Linear(d_model, d_inner)
    self.w_2 = nn.Linear(d_inner, d_model)
    self.act = nn.GELU()

  def forward(self, x):
    return self.w_2(self.act(self.w_1(x)))


class DigDecoderLayer(nn.Module):
  """Official `TransformerDecoderLayer`: pre-norm (LayerNorm eps 1e-5) self-attention,
  cross-attention on the memory, GELU MLP, each with its residual."""

  def __init__(self, d_model, num_heads, d_inner):
    super().__init__()
    self.norm1 = nn.LayerNorm(d_model)
    self.norm2 = nn.LayerNorm(d_model)
    self.norm3 = nn.LayerNorm(d_model)
    self.self_attn = DigAttention(d_model, num_heads)
    self.enc_attn = DigAttention(d_model, num_heads)
    self.mlp = DigFeedForward(d_model, d_inner)

  def forward(self, x, memory, mask):
    y = self.norm1(x)
    x = x + self.self_attn(y, y, mask)
    x = x + self.enc_attn(self.norm2(x), memory)
    return x + self.mlp(self.norm3(x))


class DigPositionalEncoding(nn.Module):
  """The stored (persistent) sin-cos `position_table` [1, n_position, d]."""

  def __init__(self, d_model, n_position=200):
    super().__init__()
    self.register_buffer(
      "position_table", torch.from_numpy(posembed.dig_position_table(n_position, d_model))[None]
    )

  def forward(self, x):
    return x + self.position_table[:, : x.shape[1]]


class DigTFDecoder(nn.Module):
  """Official DiG `TFDecoder` (`decoder.*` of a fine-tuned checkpoint): embeddings (no scale)
  + stored positions, pre-norm layers, final LayerNorm (eps 1e-6), classifier with bias."""

  def __init__(
    self, num_classes, d_model=512, num_layers=6, num_heads=8, d_inner=256, n_position=200
  ):
    super().__init__()
    self.trg_word_emb = nn.Embedding(num_classes + 1, d_model)
    self.position_enc = DigPositionalEncoding(d_model, n_position)
    self.layer_stack = nn.ModuleList(
      [DigDecoderLayer(d_model, num_heads, d_inner) for _ in range(num_layers)]
    )
    self.layer_norm = nn.LayerNorm(d_model, eps=1e-6)
    self.classifier = nn.Linear(d_model, num_classes)

  def forward(self, memory, inputs):
    """memory [B, N, d] (after linear_norm), inputs [B, L] -> logits [B, L, C] (causal)."""
    n = inputs.shape[1]
    x = self.position_enc(self.trg_word_emb(inputs))
    mask = torch.ones(n, n, dtype=torch.bool, device=inputs.device).tril()
    for layer in self.layer_stack:
      x = layer(x, memory, mask)
    return self.classifier(self.layer_norm(x))


def ctc_collapse(logits, *, blank: int, eos: int, pad: int, length: int):
  """Best-path CTC decoding with tensor ops only (ONNX-exportable; no Python loop over the
  batch): argmax per frame, merge repeats, drop blanks and EOS frames, then EOS and PAD.

  The math of `models/decoders.py ctc_greedy`: logits [B, T, C] -> (ids int64 [B, length],
  confidence [B] = the probability of the best path). Text longer than `length - 1` is cut.
  """
  probs = logits.float().softmax(-1)
  top, best = probs.max(-1)  # [B, T]
  conf = top.log().sum(-1).exp()
  prev = torch.cat([torch.full_like(best[:, :1], blank), best[:, :-1]], 1)
  keep = (best != blank) & (best != eos) & (best != prev)
  # Each kept frame goes to its rank among the kept ones; the others (and ranks past the end)
  # to a spare column `length` that is dropped, as `mode="drop"` does in JAX.
  pos = torch.where(keep, keep.long().cumsum(1) - 1, torch.full_like(best, length))
  spare = torch.full_like(best[:, :1], pad).repeat(1, length + 1)
  ids = spare.scatter(1, pos.clamp(max=length), best)
  n = keep.long().sum(1, keepdim=True).clamp(max=length)
  ids = ids.scatter(1, n, torch.full_like(n, eos))
  return ids[:, :length], conf


class Recognizer(nn.Module):
  """encoder + decoder. `forward(images) -> (ids [B, L], logits)`: greedy decoding, ids in
  the charset layout (characters, EOS, then PAD), like `recognition.predict`.

  `decode(images) -> (ids, confidence, logits)` also gives `recognition.predict`'s
  confidence. Decoding always runs `max_len + 1` steps (no early exit) and CTC collapses
  with tensor ops, so the module traces to a fixed graph (`python -m sslocr_jax.export
  --format=onnx`).
  """

  def __init__(self, encoder, decoder_name, decoder, *, max_len, bos, eos, pad, linear_norm=None):
    super().__init__()
    self.encoder = encoder
    if linear_norm is not None:
      self.linear_norm = linear_norm
    self.decoder = decoder
    self.decoder_name = decoder_name
    self.length, self.bos, self.eos, self.pad = max_len + 1, bos, eos, pad

  def _memory(self, features):
    return self.linear_norm(features) if self.decoder_name == "transformer" else features

  def logits(self, images, inputs=None):
    """CTC: logits [B, T, C]; else teacher-forced logits [B, L, C] for inputs [B, L]."""
    features = self.encoder(images)
    if self.decoder_name == "ctc":
      return self.decoder(features)
    return self.decoder(self._memory(features), inputs)

  def decode(self, images):
    """images [B, 3, H, W] in [-1, 1] -> (ids int64 [B, max_len + 1], confidence [B],
    logits [B, T or max_len + 1, C])."""
    features = self.encoder(images)
    if self.decoder_name == "ctc":
      logits = self.decoder(features)
      ids, conf = ctc_collapse(
        logits, blank=self.pad, eos=self.eos, pad=self.pad, length=self.length
      )
      return ids, conf, logits
    memory = self._memory(features)
    tokens = torch.full_like(memory[:, :1, 0], self.bos, dtype=torch.long)  # [B, 1]
    done = torch.zeros_like(tokens[:, 0], dtype=torch.bool)
    logp = torch.zeros_like(memory[:, 0, 0], dtype=torch.float32)
    state = self.decoder.prepare(memory) if self.decoder_name == "attention" else None
    steps, ids = [], []
    # Fixed length: after its EOS a row keeps decoding but emits PAD and adds nothing to its
    # confidence, as `greedy_decode`'s while_loop (which may stop earlier; same ids).
    for _ in range(self.length):
      if self.decoder_name == "attention":
        step_logits = self.decoder.step(state, tokens)
      else:
        step_logits = self.decoder(memory, tokens)[:, -1]
      steps.append(step_logits)
      top, nxt = step_logits.float().log_softmax(-1).max(-1)
      nxt = torch.where(done, torch.full_like(nxt, self.pad), nxt)
      logp = logp + torch.where(done, torch.zeros_like(top), top)
      ids.append(nxt)
      done = done | (nxt == self.eos)
      tokens = torch.cat([tokens, nxt[:, None]], 1)
    return torch.stack(ids, 1), logp.exp(), torch.stack(steps, 1)

  def forward(self, images):
    ids, _, logits = self.decode(images)
    return ids, logits


class UInt8Images(nn.Module):
  """The deployment graph's front: uint8 RGB images [B, H, W, 3] (already at the model's
  size) -> `Recognizer`: (ids [B, L], confidence [B]); an encoder: features [B, N, D]."""

  def __init__(self, model):
    super().__init__()
    self.model = model

  def forward(self, images):
    x = images.permute(0, 3, 1, 2).float() / 127.5 - 1.0
    if isinstance(self.model, Recognizer):
      ids, conf, _ = self.model.decode(x)
      return ids, conf
    return self.model(x)


# ----------------------------------------------------------------------------- build
def _dig_style(cfg):
  return (
    cfg.get("decoder") == "transformer"
    and (cfg.get("decoder_config") or {}).get("style", "nrtr") == "dig"
  )


def build_encoder(cfg):
  m = cfg["model"]
  h, w = cfg.get("image_size", (32, 128))
  if m.get("name", "vit") == "resnet":
    return ResNetEncoder(
      int(m.get("channels", 512)),
      tuple(m.get("blocks", (1, 2, 5, 3))),
      int(m.get("lstm_hidden", 256)),
      int(m.get("lstm_layers", 2)),
      bool(m.get("tps", False)),
      int(m.get("num_fiducials", 20)),
      int(m.get("tps_channels", 512)),
      (h, w),
    )
  return ViTEncoder(
    int(m["embed_dim"]),
    int(m["depth"]),
    int(m["num_heads"]),
    float(m.get("mlp_ratio", 4.0)),
    int(m.get("patch_size", 4)),
    (h, w),
    final_norm=cfg.get("include", "all") != "encoder" and _dig_style(cfg),
  )


def encoder_dim(cfg):
  m = cfg["model"]
  if m.get("name", "vit") == "resnet":
    return (
      int(m.get("lstm_hidden", 256))
      if int(m.get("lstm_layers", 2))
      else int(m.get("channels", 512))
    )
  return int(m["embed_dim"])


def build(cfg):
  """The module for a model JSON written by `python -m sslocr_jax.export` (a dict)."""
  if cfg.get("include", "all") == "encoder":
    return EncoderOnly(build_encoder(cfg))
  if cfg["method"] == "dig":
    m, h = cfg["model"], cfg["heads"]
    kw = dict(
      embed_dim=int(m["embed_dim"]),
      depth=int(m["depth"]),
      num_heads=int(m["num_heads"]),
      mlp_ratio=float(m.get("mlp_ratio", 4.0)),
      patch_size=int(m.get("patch_size", 4)),
      image_size=tuple(cfg["image_size"]),
    )
    return DiGPretrain(kw, **h)
  if cfg["method"] == "recognition":
    encoder = build_encoder(cfg)
    grid_h = encoder.grid_h
    d, c, name = encoder_dim(cfg), int(cfg["num_classes"]), cfg["decoder"]
    dc = cfg.get("decoder_config", {})
    linear_norm = None
    if name == "ctc":
      head, hidden = dc.get("head", "linear"), int(dc.get("hidden_dim", 512))
      decoder = CtcDecoder(d, c, grid_h, head, hidden, bool(dc.get("center_frames", False)))
    elif name == "attention":
      decoder = AttentionDecoder(d, c, int(dc["hidden_dim"]), int(dc["attention_dim"]), grid_h)
    elif name == "transformer" and _dig_style(cfg):
      dm = int(dc["d_model"])
      linear_norm = nn.Sequential(nn.Linear(d, dm), nn.LayerNorm(dm))
      decoder = DigTFDecoder(
        c,
        dm,
        int(dc["num_layers"]),
        int(dc["num_heads"]),
        int(dc["mlp_dim"]),
        int(dc.get("n_position", 200)),
      )
    elif name == "transformer":
      dm = int(dc["d_model"])
      linear_norm = nn.Sequential(nn.Linear(d, dm), nn.LayerNorm(dm, eps=1e-6))
      decoder = TransformerDecoder(
        c,
        dm,
        int(dc["num_layers"]),
        int(dc["num_heads"]),
        int(dc["mlp_dim"]),
        int(dc.get("max_positions", 256)),
      )
    else:
      raise ValueError(f"unknown decoder {name!r}")
    return Recognizer(
      encoder,
      name,
      decoder,
      max_len=int(cfg["max_len"]),
      bos=int(cfg["bos"]),
      eos=int(cfg["eos"]),
      pad=int(cfg["pad"]),
      linear_norm=linear_norm,
    )
  raise ValueError(f"unknown method {cfg.get('method')!r}")

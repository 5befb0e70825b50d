"""The official DiG pretraining model and train step, restated in PyTorch: the speed baseline.

Restated (not copied) from the official release, github.com/ayumiymk/DiG:
`modeling_pretrain_moco_mim_ori.py` (MoCo_ViT, `pretrain_simmim_moco_ori_vit_{tiny,small}_
patch4_32x128` with `--patchnet_name no_patchtrans`, as in its README's pretraining command),
`modeling_pretrain_vit.py` (PretrainVisionTransformerEncoder), `modeling_finetune.py`
(Attention / Block / Mlp / PatchEmbed, sin-cos table) and `engine_for_pretraining_moco.py`
(MIM target, loss weights, backward, optimizer step). The layer code keeps the release's
formulation (one qkv Linear with the bias concatenated per call, `q @ k^T`, softmax, `@ v`,
permutes, nn.GELU, LayerNorm eps 1e-6) because the speed of those exact ops is what is compared.

Single process: `concat_all_gather` is the identity and the labels are `arange(N)`; label
smoothing 0 (the release's default) is plain cross-entropy. fp32 on the CPU (the release runs
`torch.cuda.amp.autocast` on GPUs). AdamW is `torch.optim.AdamW` with the release's parameter
groups (no decay on 1-D params and biases; momentum networks are not optimised).

`state_dict()` has exactly the keys and shapes of an official DiG checkpoint's "model"
(checked by tests/test_benchmarks.py through train/torch_state.py, which imports official files).
"""

import math

import numpy as np
import torch
from torch import nn
import torch.nn.functional as F

SIZES = {"tiny": (192, 3), "small": (384, 6), "base": (512, 8)}  # embed_dim, heads; depth 12


def sincos_table(n_position: int, d: int) -> torch.Tensor:
  """[1, n, d] float32; sin on even, cos on odd columns (modeling_finetune.py)."""
  pos = np.arange(n_position, dtype=np.float64)[:, None]
  angle = pos / np.power(10000, 2 * (np.arange(d) // 2) / d)
  angle[:, 0::2] = np.sin(angle[:, 0::2])
  angle[:, 1::2] = np.cos(angle[:, 1::2])
  return torch.FloatTensor(angle).unsqueeze(0)


class Attention(nn.Module):
  def __init__(self, dim, num_heads):
    super().__init__()
    self.num_heads = num_heads
    self.scale = (dim // num_heads) ** -0.5
    self.qkv = nn.Linear(dim, dim * 3, bias=False)
    self.q_bias = nn.Parameter(torch.zeros(dim))
    self.v_bias = nn.Parameter(torch.zeros(dim))
    self.proj = nn.Linear(dim, dim)

  def forward(self, x):
    b, n, _ = x.shape
    bias = torch.cat((self.q_bias, torch.zeros_like(self.v_bias, requires_grad=False), self.v_bias))
    qkv = F.linear(x, self.qkv.weight, bias)
    qkv = qkv.reshape(b, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
    q, k, v = qkv[0], qkv[1], qkv[2]
    attn = ((q * self.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
    return self.proj((attn @ v).transpose(1, 2).reshape(b, n, -1))


class Mlp(nn.Module):
  def __init__(self, dim, hidden):
    super().__init__()
    self.fc1, self.act, self.fc2 = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)

  def forward(self, x):
    return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
  def __init__(self, dim, num_heads):
    super().__init__()
    self.norm1 = nn.LayerNorm(dim, eps=1e-6)
    self.attn = Attention(dim, num_heads)
    self.norm2 = nn.LayerNorm(dim, eps=1e-6)
    self.mlp = Mlp(dim, 4 * dim)

  def forward(self, x):
    x = x + self.attn(self.norm1(x))
    return x + self.mlp(self.norm2(x))


class PatchEmbed(nn.Module):
  def __init__(self, dim, patch=4):
    super().__init__()
    self.proj = nn.Conv2d(3, dim, kernel_size=patch, stride=patch)

  def forward(self, x):
    return self.proj(x).flatten(2).transpose(1, 2)


class Encoder(nn.Module):
  """PretrainVisionTransformerEncoder with MoCo_ViT's changes (final norm = Identity)."""

  def __init__(self, dim, num_heads, depth=12, num_patches=256):
    super().__init__()
    self.patch_embed = PatchEmbed(dim)
    self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
    self.register_buffer("pos_table", sincos_table(num_patches, dim), persistent=False)
    self.blocks = nn.ModuleList([Block(dim, num_heads) for _ in range(depth)])
    for m in self.modules():
      if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
          nn.init.zeros_(m.bias)
    # MoCo_ViT re-initialises the patch conv xavier-uniform on the [3*p*p, D] matrix.
    val = math.sqrt(6.0 / float(3 * 16 + dim))
    nn.init.uniform_(self.patch_embed.proj.weight, -val, val)
    nn.init.zeros_(self.patch_embed.proj.bias)

  def forward(self, x, mask=None):
    x = self.patch_embed(x)
    b, n, _ = x.shape
    if mask is not None:
      x = x * (~mask).unsqueeze(-1) + self.mask_token.expand(b, n, -1) * mask.unsqueeze(-1)
    x = x + self.pos_table.type_as(x).clone().detach()
    for blk in self.blocks:
      x = blk(x)
    return x


def build_mlp(num_layers, input_dim, mlp_dim, output_dim, last_bn=True):
  """MoCo_ViT._build_mlp: Linear (no bias) / BN / ReLU, last BN without affine."""
  layers = []
  for i in range(num_layers):
    d1 = input_dim if i == 0 else mlp_dim
    d2 = output_dim if i == num_layers - 1 else mlp_dim
    layers.append(nn.Linear(d1, d2, bias=False))
    if i < num_layers - 1:
      layers += [nn.BatchNorm1d(d2), nn.ReLU(inplace=True)]
    elif last_bn:
      layers.append(nn.BatchNorm1d(d2, affine=False))
  return nn.Sequential(*layers)


class DiG(nn.Module):
  """MoCo_ViT(use_pixel_target=True, use_moco_target=True, patchnet no_patchtrans)."""

  def __init__(
    self,
    size="small",
    num_windows=4,
    mlp_dim=4096,
    dim=256,
    T=0.2,
    *,
    embed_dim=None,
    num_heads=None,
    depth=12,
    pix_hidden=512,
    mim_hidden=192,
  ):
    super().__init__()
    d, heads = SIZES[size] if embed_dim is None else (embed_dim, num_heads)
    self.T, self.num_windows = T, num_windows
    self.encoder = Encoder(d, heads, depth)
    self.momentum_encoder = Encoder(d, heads, depth)
    self.encoder_projection_layer = build_mlp(3, d, mlp_dim, dim)
    self.momentum_projection_layer = build_mlp(3, d, mlp_dim, dim)
    self.predictor = build_mlp(2, dim, mlp_dim, dim)
    self.pix_projector = build_mlp(3, d, pix_hidden, d)
    self.pix_projector_m = build_mlp(3, d, pix_hidden, d)
    self.pix_decoder = nn.Sequential(
      nn.Linear(d, mim_hidden, bias=False),
      nn.Linear(mim_hidden, mim_hidden, bias=False),
      nn.LayerNorm(mim_hidden, eps=1e-6),
      nn.GELU(),
      nn.Linear(mim_hidden, 48),
    )
    for online, momentum in self._pairs():
      for pb, pm in zip(online.parameters(), momentum.parameters()):
        pm.data.copy_(pb.data)
        pm.requires_grad = False

  @classmethod
  def from_config(cls, config):
    """The model of one of our DiG configs (the official sizes give the official model)."""
    m = config.model
    assert config.proj_hidden_dim == config.pred_hidden_dim, "the release shares mlp_dim"
    return cls(
      num_windows=config.num_windows,
      mlp_dim=config.proj_hidden_dim,
      dim=config.proj_dim,
      T=config.temperature,
      embed_dim=m.embed_dim,
      num_heads=m.num_heads,
      depth=m.depth,
      pix_hidden=config.pix_hidden_dim,
      mim_hidden=config.mim_hidden_dim,
    )

  def _pairs(self):
    return [
      (self.encoder, self.momentum_encoder),
      (self.encoder_projection_layer, self.momentum_projection_layer),
      (self.pix_projector, self.pix_projector_m),
    ]

  @torch.no_grad()
  def _update_momentum_encoder(self, m):
    for online, momentum in self._pairs():
      for pb, pm in zip(online.parameters(), momentum.parameters()):
        pm.data = pm.data * m + pb.data * (1.0 - m)

  def _windows(self, seq_x):
    """PatchNet (no patch transformer): [B, 256, C] -> [B, num_windows, C]."""
    b, _, c = seq_x.shape
    x = seq_x.reshape(b, 8, 32, c).permute(0, 3, 1, 2)
    return F.adaptive_avg_pool2d(x, (1, self.num_windows)).permute(0, 2, 3, 1).squeeze(1)

  def contrastive_loss(self, q, k):
    q, k = F.normalize(q, dim=1), F.normalize(k, dim=1)
    logits = torch.einsum("nc,mc->nm", [q, k]) / self.T
    labels = torch.arange(logits.shape[0], dtype=torch.long)
    return F.cross_entropy(logits, labels) * (2 * self.T)

  def _branch(self, encoder, pix_projector, all_images, mask):
    out = encoder(all_images, mask)
    masked, aug = out.chunk(2, dim=0)
    b, l, c = masked.shape
    masked = pix_projector(masked.reshape(b * l, c)).reshape(b, l, c)
    return out, torch.cat([masked, aug], dim=0)

  def forward(self, image, aug_image, mask, m):
    """image, aug_image [B, 3, 32, 128] in [-1, 1]; mask bool [B, 2, 256] (view 2 all False)
    -> (contrastive loss, masked-patch predictions [B, n_masked, 48])."""
    all_images = torch.cat([image, aug_image], dim=0)
    mask = mask.permute(1, 0, 2).reshape(-1, mask.size(-1))
    enc_out, feats = self._branch(self.encoder, self.pix_projector, all_images, mask)
    patches = self._windows(feats)
    b, l, c = patches.shape
    qs = self.predictor(self.encoder_projection_layer(patches.reshape(b * l, c)))
    q1, q2 = (q.reshape(-1, q.size(-1)) for q in qs.reshape(b, l, -1).chunk(2, dim=0))
    with torch.no_grad():
      self._update_momentum_encoder(m)
      _, feats_m = self._branch(self.momentum_encoder, self.pix_projector_m, all_images, mask)
      patches_m = self._windows(feats_m)
      ks = self.momentum_projection_layer(patches_m.reshape(b * l, c))
      k1, k2 = (k.reshape(-1, k.size(-1)) for k in ks.reshape(b, l, -1).chunk(2, dim=0))
    contra = self.contrastive_loss(q1, k2) + self.contrastive_loss(q2, k1)
    dec = self.pix_decoder(enc_out)  # both views, as in the release
    n = dec.shape[0]
    vis_out = dec.chunk(2, dim=0)[0][mask.chunk(2, dim=0)[0]].reshape(n // 2, -1, dec.shape[-1])
    return contra, vis_out


def parameter_groups(model, weight_decay):
  """optim_factory.get_parameter_groups without layer decay."""
  decay, no_decay = [], []
  for name, p in model.named_parameters():
    if not p.requires_grad:
      continue
    (no_decay if p.ndim == 1 or name.endswith(".bias") else decay).append(p)
  return [
    {"params": decay, "weight_decay": weight_decay},
    {"params": no_decay, "weight_decay": 0.0},
  ]


def make_step(
  model, lr=1.5e-4, weight_decay=0.1, momentum=0.99, mim_weight=1.0, contrastive_weight=0.1
):
  """train_one_epoch's body for one batch: returns `step(images, aug_images, mask) -> loss`.

  images, aug_images: float [B, 3, 32, 128] in [-1, 1]; mask: bool [B, 256] for view 1.
  """
  opt = torch.optim.AdamW(parameter_groups(model, weight_decay), lr=lr, betas=(0.9, 0.999))
  model.train()

  def step(images, aug_images, mask):
    with torch.no_grad():  # MIM target: raw pixels in [0, 1], (p1 p2 c), masked patches only
      b = images.shape[0]
      unnorm = images * 0.5 + 0.5
      patches = unnorm.reshape(b, 3, 8, 4, 32, 4).permute(0, 2, 4, 3, 5, 1).reshape(b, 256, 48)
      both = torch.stack([mask, torch.zeros_like(mask)], dim=1)  # only_mim_on_ori_img
      labels = patches[mask].reshape(b, -1, 48)
    contra, vis_out = model(images, aug_images, both, momentum)
    loss = contrastive_weight * contra + mim_weight * F.mse_loss(vis_out, labels)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.item()

  return step


def example_inputs(batch: int, seed: int = 0, mask_ratio: float = 0.7):
  """Random views and a mask with exactly round(0.7 * 256) patches per image (as the release)."""
  g = torch.Generator().manual_seed(seed)
  images = torch.rand(batch, 3, 32, 128, generator=g) * 2 - 1
  aug = torch.rand(batch, 3, 32, 128, generator=g) * 2 - 1
  k = int(round(mask_ratio * 256))
  order = torch.rand(batch, 256, generator=g).argsort(dim=1)
  mask = torch.zeros(batch, 256, dtype=torch.bool).scatter_(1, order[:, :k], True)
  return images, aug, mask


def step_flops(model, batch: int) -> float:
  """FLOPs of one train step (forward + backward, no optimizer) by torch's FLOP counter."""
  from torch.utils.flop_counter import FlopCounterMode  # pylint: disable=g-import-not-at-top

  images, aug, mask = example_inputs(batch)
  both = torch.stack([mask, torch.zeros_like(mask)], dim=1)
  with FlopCounterMode(display=False) as counter:
    contra, vis_out = model(images, aug, both, 0.99)
    (contra + vis_out.square().mean()).backward()
  model.zero_grad(set_to_none=True)
  return float(counter.get_total_flops())

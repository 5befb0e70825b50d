r"""SimAN pretraining: restore a style-augmented patch with the style of its neighbour (SAN + GAN).

Variants (`--config=configs/siman.py:VARIANT`, comma-separated, big_vision style):
  (none)       the recipe for accelerators (ours; the paper gives no code): TPS + ResNet (512) +
               2-layer BiLSTM (256) as in configs/seqclr.py, patches 32 x 64, global batch 256,
               10 epochs of the synthetic lines;
  encoder=E    resnet (default) | vit (models/vit.py on 32 x W patches; size=S picks its size);
  size=S       ViT size: tiny | small | base (with encoder=vit);
  tps=BOOL     TPS rectification on/off (resnet; default: on, off for cpu/smoke);
  cpu          README quick-start: the encoder of `finetune.py:cpu` (so the workdir is a valid
               `init_from`), a few minutes on a 2-core CPU, reconstruction grids every 100 steps,
               the representation probe every 50 steps (docs/probe.md);
  smoke        a tiny encoder (= `finetune.py:smoke`), a few steps, under a minute on a CPU.

The method's fields (methods/siman.py; every one the paper leaves open is ours):
  image_width          W: the patch width and the encoder's input width; lines are resized to
                       32 x 2W and cut into two adjacent patches (ours: 64)
  san_dim              width of SAN's query/key projections (1x1 convolutions)
  san_eps, in_eps      eps of the aligned std / of the instance normalization
  decoder_width        channels of the decoder at the base grid (32 / 2^k x W / 2^k)
  decoder_upsamples    k, upsampling stages of the decoder (2)
  disc_width, disc_layers, disc_norm   PatchGAN: first width, stride-2 layers, instance | none
  pixel_loss           l2 | l1, in [-1, 1] units; pixel_weight its weight (1.0)
  adv_weight           weight of the generator's hinge term (ours: 0.1)
  adv_warmup_steps     pixel-loss-only steps before the adversarial term switches on
  optim.generator, optim.discriminator   one optimizer per phase (train/optim.py fields)

Every field can be overridden: `--config.adv_weight=0 --config.optim.generator.base_lr=2e-3`.
"""

from sslocr_jax import config_utils as cu
from sslocr_jax.models import resnet
from sslocr_jax.models import vit
import ml_collections


def model_block(encoder: str, size: str, tps: bool) -> ml_collections.ConfigDict:
  if encoder == "resnet":
    return ml_collections.ConfigDict(cu.resnet_model(resnet.SIZE, tps))
  if encoder == "vit":
    return ml_collections.ConfigDict(
      dict(
        name="vit",
        **cu.vit_size(vit.SIZES, size),
        mlp_ratio=4.0,
        patch_size=4,
        drop_path_rate=0.0,
        remat="none",
      )
    )
  raise ValueError(f"encoder={encoder!r} is unknown; valid: resnet, vit")


def get_config(arg=None):
  a = cu.parse_arg(arg, encoder="resnet", size="small", tps="auto", cpu=False, smoke=False)
  small = a.cpu or a.smoke
  tps = (not small) if a.tps == "auto" else a.tps.lower() in ("1", "true", "yes")
  # dtype: encoder compute (auto: bf16 on GPU/TPU); SAN/decoder/discriminator: f32.
  c = cu.header("pretrain", "siman", batch_size=256)

  # Data: the built-in synthetic lines unless data.source says otherwise.
  c.image_height = 32
  c.image_width = 64  # W, one patch; the line is resized to 32 x 2W (ours)

  c.model = model_block(a.encoder, a.size, tps)

  # SimAN (ours where the paper is silent: see the module docstring and docs/siman.md).
  c.san_dim = 256
  c.san_eps = 1e-5
  c.in_eps = 1e-5
  c.decoder_width = 256
  c.decoder_upsamples = 2
  c.disc_width = 64
  c.disc_layers = 2
  c.disc_norm = "instance"
  c.pixel_loss = "l2"
  c.pixel_weight = 1.0
  c.adv_weight = 0.1
  c.adv_warmup_steps = 5000

  # One optimizer per phase (ours): GAN-style b1 = 0.5; equal peak lrs (a 5x slower
  # discriminator fell to chance as soon as the adversarial term started, docs/siman.md).
  c.optim = ml_collections.ConfigDict(
    {
      "generator": dict(
        name="adamw",
        base_lr=1e-3,
        lr_batch_base=256,
        warmup_steps=2000,
        end_lr=1e-5,
        weight_decay=1e-4,
        b1=0.5,
        b2=0.999,
        grad_clip=5.0,
      ),
      "discriminator": dict(
        name="adamw",
        base_lr=1e-3,
        lr_batch_base=256,
        warmup_steps=2000,
        end_lr=1e-5,
        weight_decay=0.0,
        b1=0.5,
        b2=0.999,
        grad_clip=0.0,
      ),
    }
  )

  cu.add_run_fields(c, checkpoint_every=1000)
  # The representation probe (docs/probe.md; off, on in `cpu`): the ResNet reads whole
  # 32 x 128 lines, as fine-tuning does (finetune.py), the ViT only its own 32 x W.
  cu.add_probe_fields(c, image_width=128 if a.encoder == "resnet" else 0)

  if a.cpu:
    if a.encoder == "vit":  # = finetune.py:cpu (and dig.py:cpu)
      c.model.update(cu.vit_size(vit.SIZES, "cpu"))
    else:  # = finetune.py:cpu
      c.model.update(channels=64, lstm_hidden=64, lstm_layers=1, tps_channels=64)
    c.san_dim, c.decoder_width, c.disc_width = 64, 64, 32
    c.data = cu.synthetic_data(num_samples=200_000, num_workers=0)
    c.batch_size = 32
    c.total_steps = 200
    c.adv_warmup_steps = 150
    for phase in ("generator", "discriminator"):
      c.optim[phase].update(lr_batch_base=0, warmup_steps=20, base_lr=2e-3)
    c.log_every = 10
    c.checkpoint_every = 50
    c.viz_every = 50
    c.probe_every = 50  # half-size probes, ~3 steps of CPU each (docs/probe.md)
    c.probe.update(train_samples=512, eval_samples=256)
  if a.smoke:
    if a.encoder == "vit":  # = finetune.py:smoke (and dig.py:smoke)
      c.model.update(cu.vit_size(vit.SIZES, "smoke"))
    else:  # = finetune.py:smoke (and seqclr.py:smoke)
      c.model.update(
        channels=32, blocks=(1, 1, 1, 1), lstm_hidden=16, lstm_layers=1, tps_channels=32
      )
    c.san_dim, c.decoder_width, c.disc_width = 16, 32, 16
    c.data = cu.synthetic_data(num_samples=64, num_workers=0)  # lines repeat: a clear drop
    c.batch_size = 16
    c.total_steps = 24
    c.adv_warmup_steps = 12
    for phase in ("generator", "discriminator"):
      c.optim[phase].update(lr_batch_base=0, warmup_steps=2, end_lr=1e-4)
    c.optim.generator.base_lr = 5e-3
    c.log_every = 4
    c.checkpoint_every = 12
    c.viz_every = 24
  return c

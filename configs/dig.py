r"""DiG pretraining: SimMIM reconstruction + MoCo-v3 contrast on window instances (ViT).

Variants (`--config=configs/dig.py:VARIANT`, comma-separated, big_vision style):
  (none)      the paper recipe for accelerators: ViT-Small, global batch 1024,
              lr 1.5e-4 x batch/256, warm-up 3% of the run (the release: 5000 of ~154k steps,
              README `--warmup_steps 5000`; a fixed 5000 would be 26% of our 19.5k), cosine to
              1e-5, 10 epochs;
  size=S      encoder size: tiny | small | base (with any variant);
  cpu         README quick-start: a 4-block ViT of width 128 on the synthetic lines,
              a few minutes on a 2-core CPU, with reconstruction grids and the
              representation probe every 50 steps (docs/probe.md);
  smoke       a tiny ViT, a few steps, under a minute on a CPU (tests and checks).

Every field can be overridden: `--config.total_steps=2000 --config.optim.base_lr=1e-3`.
"""

from sslocr_jax import config_utils as cu
from sslocr_jax.models import vit
import ml_collections


def get_config(arg=None):
  a = cu.parse_arg(arg, size="small", cpu=False, smoke=False)
  c = cu.header("pretrain", "dig", batch_size=1024)
  c.init_from = ""  # an official DiG .pth / exported .safetensors (methods/dig.py)

  # Data: the built-in synthetic lines (2M virtual samples) unless data.source says otherwise.
  c.image_height, c.image_width = 32, 128

  # Encoder (models/vit.py).
  c.model = ml_collections.ConfigDict(
    dict(
      name="vit",
      **cu.vit_size(vit.SIZES, a.size),
      mlp_ratio=4.0,
      patch_size=4,
      drop_path_rate=0.0,
      remat="none",
      attention="auto",  # auto | xla | cudnn | explicit (models/vit.py Attention)
    )
  )

  # DiG objective (names as in the paper / official release).
  c.mask_ratio = 0.7  # fraction of the 256 patches masked in view 1
  c.num_windows = 4  # patch-wise instance mapping: 8x32 tokens -> 1 x num_windows
  # (adaptive average pooling: any value 1..32)
  c.temperature = 0.2  # InfoNCE temperature; the loss is scaled by 2T
  # Branches (ablation arms as the release builds them, modeling_pretrain_moco_mim_ori.py):
  #   both          MIM + contrast (DiG);
  #   contrastive   `use_pixel_target=False`: MoCo v3 on the original and the augmented view,
  #                 no mask on view 1, no pix projector, no MIM head;
  #   mim           `use_moco_target=False`: SimMIM on view 1 only, no contrastive networks.
  # (mim_weight=0 / contrastive_weight=0 with branches=both are the older, handicapped arms.)
  c.branches = "both"
  c.mim_weight = 1.0
  # MIM target (methods/dig.py mim_target): pixels (the release's: the patch in [0, 1]),
  # centred (ours: minus the patch's mean) or normalized (MAE's norm_pix_loss).
  c.mim_target = "pixels"
  c.contrastive_weight = 0.1
  c.momentum = 0.99  # key-encoder momentum at step 0, cosine schedule to 1.0
  c.mim_hidden_dim = 192
  c.pix_hidden_dim = 512
  c.proj_hidden_dim = 4096
  c.proj_dim = 256
  c.pred_hidden_dim = 4096

  c.optim = ml_collections.ConfigDict(
    dict(
      name="adamw",
      base_lr=1.5e-4,
      lr_batch_base=256,
      warmup_steps=0,
      warmup_fraction=0.03,
      end_lr=1e-5,
      weight_decay=0.1,
      b1=0.9,
      b2=0.999,
      grad_clip=0.0,
    )
  )

  cu.add_run_fields(c, checkpoint_every=1000)
  cu.add_probe_fields(c)  # the representation probe (docs/probe.md): off, on in `cpu`

  if a.cpu:
    c.model.update(cu.vit_size(vit.SIZES, "cpu"))
    c.mim_hidden_dim = 128
    c.pix_hidden_dim = 256
    c.proj_hidden_dim = c.pred_hidden_dim = 1024
    c.data = cu.synthetic_data(num_samples=200_000, num_workers=0)
    c.batch_size = 32
    c.total_steps = 200
    c.optim.update(base_lr=8e-3, warmup_steps=20, end_lr=1e-5, weight_decay=0.05)
    c.log_every = 10
    c.checkpoint_every = 50
    c.viz_every = 50
    c.probe_every = 50  # half-size probes, ~3 steps of CPU each (docs/probe.md)
    c.probe.update(train_samples=512, eval_samples=256)
  if a.smoke:
    c.model.update(cu.vit_size(vit.SIZES, "smoke"))
    c.mim_hidden_dim = c.pix_hidden_dim = 32
    c.proj_hidden_dim = c.pred_hidden_dim = 64
    c.proj_dim = 32
    c.data = cu.synthetic_data(num_samples=512, num_workers=0)
    c.batch_size = 8
    c.total_steps = 12
    c.optim.update(base_lr=1.5e-2, warmup_steps=2, end_lr=1e-4, weight_decay=0.05)
    c.log_every = 2
    c.checkpoint_every = 6
    c.viz_every = 12
  return c

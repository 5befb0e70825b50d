r"""Text recognition: fine-tuning, decoder evaluation (frozen encoder) or training from scratch.

Variants (`--config=configs/finetune.py:VARIANT`, comma-separated, big_vision style):
  (none)        the DiG recipe for accelerators: ViT-Small, transformer decoder (6 pre-norm
                layers, d_model 512, 8 heads), AdamW lr 8e-4 at batch 512 (scaled linearly
                with the batch), layer-wise lr decay 0.75, weight decay 0.05, drop path 0.1,
                warm-up + cosine, ABINet-kind augmentation, 10 epochs of the labeled set;
  size=S        ViT size: tiny | small | base;
  decoder=D     ctc | attention | transformer (default: transformer; attention for resnet);
  encoder=E     vit | resnet (the CNN + BiLSTM of SeqCLR/SimAN, models/resnet.py);
  cpu           README quick-start on the synthetic lines: the encoder of `dig.py:cpu` /
                `seqclr.py:cpu` / `siman.py:cpu` (so their workdirs are valid `init_from`),
                CTC (other decoders small), an easier task (90% dictionary words, the
                caseless lower36 charset, no extra augmentation), batch 32, 2000 steps
                (~10 min with the ResNet, ~45 min with the ViT on a 2-core CPU), validated on
                lines in held-out fonts;
  smoke         tiny (the encoder of `dig.py:smoke` / `seqclr.py:smoke`), under a minute.

Protocol fields:
  init_from        pretraining workdir / checkpoint folder; only the encoder is loaded ("" =
                   from scratch, the baseline);
  freeze_encoder   True: decoder evaluation (the encoder is not trained, runs in inference mode);
  data.fraction    labeled fraction (0.01, 0.1, 1.0), a deterministic subset (data.fraction_seed);
  charset          printable94 (DiG: 94 chars + EOS/PAD/UNK = 97 classes) | lower36 | a file with
                   one character per line;
  max_len          longest label (25); oov: drop | unk (labels with characters outside the charset:
                   dropped and counted, or mapped to UNK);
  val_data         validation source (default: synthetic lines in held-out fonts; or lmdb);
                   eval_every / best_metric keep the best checkpoint in WORKDIR/best/.

Every field can be overridden: `--config.decoder=ctc --config.init_from=runs/dig-cpu`.
"""

from sslocr_jax import config_utils as cu
import ml_collections

VIT_SIZES = {
    "tiny": dict(embed_dim=192, depth=12, num_heads=3),
    "small": dict(embed_dim=384, depth=12, num_heads=6),
    "base": dict(embed_dim=512, depth=12, num_heads=8),
}


def model_block(size: str, encoder: str) -> ml_collections.ConfigDict:
  """Encoder fields of both kinds; `name` picks one (models/encoders.py)."""
  if size not in VIT_SIZES:
    raise ValueError(f"size={size!r} is unknown; valid: {sorted(VIT_SIZES)}")
  return ml_collections.ConfigDict(dict(
      name=encoder,
      # ViT (models/vit.py)
      size=size, **VIT_SIZES[size], mlp_ratio=4.0, patch_size=4, drop_path_rate=0.1,
      dropout_rate=0.0, attn_dropout_rate=0.0, remat="none",
      # CNN + BiLSTM (models/resnet.py)
      channels=512, blocks=(1, 2, 5, 3), lstm_hidden=256, lstm_layers=2, tps=True,
      num_fiducials=20, tps_channels=512))


def get_config(arg=None):
  a = cu.parse_arg(arg, size="small", decoder="", encoder="vit", cpu=False, smoke=False)
  if a.encoder not in ("vit", "resnet"):
    raise ValueError(f"encoder={a.encoder!r} is unknown; valid: vit, resnet")
  c = ml_collections.ConfigDict()
  c.task = "finetune"
  c.method = "recognition"
  c.seed = 0
  c.distributed = False  # jax.distributed.initialize() first (multi-host GPU/TPU)
  c.dtype = "auto"  # bfloat16 on GPU/TPU, float32 on CPU (models/encoders.py)

  # Protocol.
  c.decoder = a.decoder or ("attention" if a.encoder == "resnet" else "transformer")
  c.init_from = ""
  c.freeze_encoder = False

  # Labels.
  c.charset = "printable94"
  c.oov = "drop"
  c.max_len = 25
  c.augment = True
  c.label_smoothing = 0.0

  # Data: synthetic lines (labels known) unless data.source says lmdb / tfds.
  c.data = cu.synthetic_data(num_samples=2_000_000, num_workers=-1)
  c.data.fraction = 1.0
  c.data.fraction_seed = 1234
  c.val_data = cu.synthetic_data(num_samples=2000, seed=1_000_003, font_split="heldout")
  c.image_height, c.image_width = 32, 128
  c.batch_size = 512
  epochs = 10
  c.total_steps = epochs * c.data.num_samples // c.batch_size
  c.schedule_steps = 0

  c.model = model_block(a.size, a.encoder)
  # Decoder sizes (models/decoders.py); only the one named by `decoder` is built.
  c.attention = ml_collections.ConfigDict(dict(hidden_dim=512, attention_dim=512))
  c.transformer = ml_collections.ConfigDict(dict(
      d_model=512, num_layers=6, num_heads=8, mlp_dim=2048, dropout_rate=0.1,
      style="nrtr", n_position=200))  # style dig: the official DiG TFDecoder (docs/export.md)

  c.optim = ml_collections.ConfigDict(dict(
      name="adamw", base_lr=8e-4, lr_batch_base=512, warmup_steps=2000, end_lr=1e-6,
      weight_decay=0.05, b1=0.9, b2=0.999, grad_clip=0.0, layer_decay=0.75))

  c.eval_every = 2000
  c.eval_batch_size = 512
  c.best_metric = "val_accuracy"

  cu.add_run_fields(c, checkpoint_every=2000, viz_every=None)

  if a.cpu:
    c.model.update(size="cpu", embed_dim=128, depth=4, num_heads=4,  # = dig.py:cpu
                   drop_path_rate=0.0)
    c.model.update(channels=64, blocks=(1, 2, 5, 3), lstm_hidden=64, lstm_layers=1,
                   tps=False, tps_channels=64)  # = seqclr.py:cpu, siman.py:cpu
    c.attention.update(hidden_dim=128, attention_dim=128)
    c.transformer.update(d_model=128, num_layers=2, num_heads=4, mlp_dim=256, dropout_rate=0.0)
    # An easier task than the default's, sized for a 2-core CPU: mostly dictionary words, the
    # caseless 36-character charset the benchmarks score, no extra augmentation, CTC.
    c.decoder = a.decoder or "ctc"
    c.charset = "lower36"
    c.augment = False
    c.data = cu.synthetic_data(num_samples=200_000, num_workers=0, word_prob=0.9)
    c.data.fraction, c.data.fraction_seed = 1.0, 1234
    c.val_data.num_samples = 512
    c.val_data.word_prob = 0.9
    c.batch_size = 32
    c.total_steps = 2000
    c.optim.update(base_lr=1e-3, lr_batch_base=0, warmup_steps=200, end_lr=1e-5,
                   layer_decay=1.0)
    c.eval_every = 500
    c.eval_batch_size = 128
    c.log_every = 25
    c.checkpoint_every = 500
  if a.smoke:
    c.model.update(size="smoke", embed_dim=32, depth=2, num_heads=2,  # = dig.py:smoke
                   drop_path_rate=0.0)
    c.model.update(channels=32, blocks=(1, 1, 1, 1), lstm_hidden=16, lstm_layers=1,
                   tps=False, tps_channels=32)  # = seqclr.py:smoke
    c.attention.update(hidden_dim=32, attention_dim=32)
    c.transformer.update(d_model=32, num_layers=1, num_heads=2, mlp_dim=64, dropout_rate=0.0)
    c.data = cu.synthetic_data(num_samples=512, num_workers=0)
    c.data.fraction, c.data.fraction_seed = 1.0, 1234
    c.val_data.num_samples = 32
    c.batch_size = 16
    c.total_steps = 8
    c.optim.update(base_lr=2e-3, lr_batch_base=0, warmup_steps=2, end_lr=1e-4)
    c.eval_every = 4
    c.eval_batch_size = 16
    c.log_every = 2
    c.checkpoint_every = 4
  return c

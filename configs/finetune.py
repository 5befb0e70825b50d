r"""Text recognition: fine-tuning, decoder evaluation (frozen encoder) or training from scratch.

Variants (`--config=configs/finetune.py:VARIANT`, comma-separated, big_vision style):
  (none)        the DiG recipe for accelerators (ayumiymk/DiG README fine-tuning command,
                run_class_finetuning.py): ViT-Small with its final LayerNorm, the official
                transformer decoder (`transformer.style="dig"`: TFDecoder, d_model 512, 6 layers,
                8 heads, inner size 256, dropout 0.1), AdamW lr 1e-4 per 256 samples (linear
                scaling: 2e-4 at our batch 512; 8e-4 at the release's 8 x 256), warm-up 1 epoch
                of 10 (`optim.warmup_fraction=0.1`), layer-wise lr decay 0.75, weight decay
                0.05, dropout / attention dropout / drop path 0.1 (no dropout on the position
                embedding), the release's ABINet augmentation (`augment_recipe="dig"`), loss
                summed over a word's tokens and averaged over words (`loss_norm="word"`,
                SeqCrossEntropyLoss), 10 epochs of the labeled set;
  size=S        ViT size: tiny | small | base;
  decoder=D     ctc | attention | transformer (default: transformer; attention for resnet);
  encoder=E     vit | resnet (the CNN + BiLSTM of SeqCLR/SimAN, models/resnet.py);
  cpu           README quick-start on the synthetic lines: the encoder of `dig.py:cpu` /
                `seqclr.py:cpu` / `siman.py:cpu` (so their workdirs are valid `init_from`),
                CTC (other decoders small), an easier task (90% dictionary words, the
                caseless lower36 charset, no extra augmentation), batch 32, 2000 steps
                (~10 min with the ResNet, ~45 min with the ViT on a 2-core CPU), validated on
                lines in held-out fonts;
  cpu60         `cpu` sized for 60 minutes of a 2-core CPU (default encoder resnet, `encoder=vit`
                for dig.py:cpu's ViT): 60% words, mild augmentation, 2% warm-up, gradient
                clipping 5, 1,000 held-out validation lines; the recipe measured against
                Tesseract by benchmarks/vs_tesseract.py (docs/recognition.md);
  smoke         tiny (the encoder of `dig.py:smoke` / `seqclr.py:smoke`), under a minute.

Protocol fields:
  init_from        pretraining workdir / checkpoint folder; only the encoder is loaded ("" =
                   from scratch, the baseline);
  freeze_encoder   True: decoder evaluation (the encoder is not trained, runs in inference mode);
  data.fraction    labeled fraction (0.01, 0.1, 1.0), a deterministic subset (data.fraction_seed);
  charset          printable94 (DiG: 94 chars + EOS/PAD/UNK = 97 classes) | lower36 | a file with
                   one character per line;
  max_len          longest label (25); oov: drop | unk | strip (labels with characters outside
                   the charset: dropped and counted, mapped to UNK, or those characters removed
                   as clovaai's dataset.py does);
  val_data         validation source (default: synthetic lines in held-out fonts; or lmdb);
                   eval_every / best_metric keep the best checkpoint in WORKDIR/best/;
  early_stop_patience / early_stop_min_steps   stop after that many evaluations in a row
                   without a new best (0 = off), not before that step; the run then ends with
                   a checkpoint at the stop step and WORKDIR/early_stop.json (train/loop.py).

Recipe fields (the release's value first; the older value of this project still reachable):
  transformer.style   dig (TFDecoder, default) | nrtr (our NRTR-style decoder, sqrt(d) scaled
                      embeddings, no encoder LayerNorm);
  ctc.head            dig (default: encoder LayerNorm -> Linear(D, 512) -> LayerNorm -> GELU ->
                      Linear, models/model_builder.py CTCRecModel) | linear (one Linear);
  augment_recipe      dig (dataset/dataset_lmdb.py + transforms.py of the release, data/augment.py
                      `dig_recognition_augment`) | mild (the older, milder chain);
  loss_norm           word (sum over a word's tokens, mean over words) | token (mean over tokens);
  model.pos_dropout   False (the release's encoder has no dropout after the position table) |
                      True (dropout_rate there too, the older behaviour);
  optim.warmup_fraction / optim.warmup_steps   warm-up as a share of the run / in steps (a
                      step count wins when > 0; train/optim.py);
  ctc.center_frames   False (the release's) | True (ours): the CTC head reads each frame
                      minus the image's mean frame; measured worse than off on the `cpu`
                      path at 2000 steps (docs/recognition.md "Centred frames");
  decoder_bilstm_layers  BiLSTM layers trained with the decoder, on the encoder's frames: for a
                      CNN-only SeqCLR encoder (`seqclr_encoder_stage=cnn`, `model.lstm_layers=0`),
                      as in SeqCLR where the BiLSTM then belongs to the decoder (0 = none).

Every field can be overridden: `--config.decoder=ctc --config.init_from=runs/dig-cpu`.
"""

from sslocr_jax import config_utils as cu
from sslocr_jax.models import resnet
from sslocr_jax.models import vit
import ml_collections


def model_block(size: str, encoder: str) -> ml_collections.ConfigDict:
  """Encoder fields of both kinds; `name` picks one (models/encoders.py)."""
  return ml_collections.ConfigDict(
    dict(
      name=encoder,
      # ViT (models/vit.py)
      # DiG fine-tuning: --drop 0.1 --attn_drop_rate 0.1 --drop_path 0.1 (README); no dropout
      # on the position table (modeling_pretrain_vit.py PretrainVisionTransformerEncoder).
      **cu.vit_size(vit.SIZES, size),
      mlp_ratio=4.0,
      patch_size=4,
      drop_path_rate=0.1,
      dropout_rate=0.1,
      attn_dropout_rate=0.1,
      pos_dropout=False,
      remat="none",
      # CNN + BiLSTM (models/resnet.py)
      **resnet.SIZE,
      tps=True,
    )
  )


def get_config(arg=None):
  a = cu.parse_arg(arg, size="small", decoder="", encoder="", cpu=False, cpu60=False, smoke=False)
  a.cpu = a.cpu or a.cpu60
  a.encoder = a.encoder or ("resnet" if a.cpu60 else "vit")
  if a.encoder not in ("vit", "resnet"):
    raise ValueError(f"encoder={a.encoder!r} is unknown; valid: vit, resnet")
  c = cu.header("finetune", "recognition", batch_size=512)

  # Protocol.
  c.decoder = a.decoder or ("attention" if a.encoder == "resnet" else "transformer")
  c.init_from = ""
  c.freeze_encoder = False

  # Labels.
  c.charset = "printable94"
  c.oov = "drop"
  c.max_len = 25
  c.augment = True
  c.augment_recipe = "dig"  # dig (the release's ABINet chain) | mild (data/augment.py)
  c.label_smoothing = 0.0
  c.loss_norm = "word"  # word: loss/seqCrossEntropyLoss.py (sum over tokens / words) | token
  c.decoder_bilstm_layers = 0

  # Data: synthetic lines (labels known) unless data.source says lmdb / tfds.
  c.data.fraction = 1.0
  c.data.fraction_seed = 1234
  c.val_data = cu.synthetic_data(num_samples=2000, seed=1_000_003, font_split="heldout")
  c.image_height, c.image_width = 32, 128
  epochs = 10

  c.model = model_block(a.size, a.encoder)
  # Decoder sizes (models/decoders.py); only the one named by `decoder` is built.
  c.attention = ml_collections.ConfigDict(dict(hidden_dim=512, attention_dim=512))
  # The official TFDecoder (models/decoder.py: n_layers 6, d_model 512, n_head 8, d_inner 256,
  # dropout 0.1, n_position 200); style "nrtr" is the older NRTR-style decoder (mlp_dim 2048).
  c.transformer = ml_collections.ConfigDict(
    dict(
      d_model=512,
      num_layers=6,
      num_heads=8,
      mlp_dim=256,
      dropout_rate=0.1,
      style="dig",
      n_position=200,
    )
  )
  # head "dig": CTCRecModel's head (models/model_builder.py); center_frames: ours
  # (docs/recognition.md "Centred frames"), the release has no such step.
  c.ctc = ml_collections.ConfigDict(dict(head="dig", hidden_dim=512, center_frames=False))

  # run_class_finetuning.py: args.lr * total_batch / 256 with --lr 1e-4, --warmup_epochs 1 of
  # --epochs 10, min_lr 1e-6, --layer_decay 0.75 (default), --weight_decay 0.05.
  c.optim = ml_collections.ConfigDict(
    dict(
      name="adamw",
      base_lr=1e-4,
      lr_batch_base=256,
      warmup_steps=0,
      warmup_fraction=1.0 / epochs,
      end_lr=1e-6,
      weight_decay=0.05,
      b1=0.9,
      b2=0.999,
      grad_clip=0.0,
      layer_decay=0.75,
      lr_mult=dict(encoder=1.0),
    )
  )  # ours: e.g. 0.3 = a pretrained encoder 3x slower than the head

  c.eval_every = 2000
  c.eval_batch_size = 512
  c.best_metric = "val_accuracy"
  # Early stopping on best_metric (train/loop.py early_stop_due): stop once `patience`
  # evaluations in a row stayed below the best one, not before `min_steps`; 0 = off.
  c.early_stop_patience = 0
  c.early_stop_min_steps = 0

  cu.add_run_fields(c, checkpoint_every=2000, viz_every=None)

  if a.cpu:
    c.model.update(
      cu.vit_size(vit.SIZES, "cpu"),  # = dig.py:cpu
      drop_path_rate=0.0,
      dropout_rate=0.0,
      attn_dropout_rate=0.0,
    )
    c.model.update(
      channels=64, blocks=(1, 2, 5, 3), lstm_hidden=64, lstm_layers=1, tps=False, tps_channels=64
    )  # = seqclr.py:cpu, siman.py:cpu
    c.attention.update(hidden_dim=128, attention_dim=128)
    c.transformer.update(d_model=128, num_layers=2, num_heads=4, mlp_dim=256, dropout_rate=0.0)
    # An easier task than the default's, sized for a 2-core CPU: mostly dictionary words, the
    # caseless 36-character charset the benchmarks score, no extra augmentation, CTC.
    c.decoder = a.decoder or "ctc"
    # Kept from the older cpu recipe: one Linear CTC head (the release's head held a scratch
    # ViT run on CTC's blank plateau longer: training loss 3.26 vs 2.77 at step 1000, issue 13)
    # and CTC's per-character loss (PyTorch CTCLoss "mean").
    c.ctc.head = "linear"
    c.loss_norm = "token"
    c.charset = "lower36"
    # Characters outside [0-9a-z] are removed from the label, not the line dropped (clovaai's
    # dataset.py; ~30% of the synthetic lines have punctuation): the model learns to skip them.
    c.oov = "strip"
    c.augment = False
    c.data = cu.synthetic_data(num_samples=200_000, num_workers=0, word_prob=0.9)
    c.data.fraction, c.data.fraction_seed = 1.0, 1234
    c.val_data.num_samples = 512
    c.val_data.word_prob = 0.9
    c.batch_size = 32
    c.total_steps = 2000
    c.optim.update(base_lr=1e-3, lr_batch_base=0, warmup_steps=200, end_lr=1e-5, layer_decay=1.0)
    c.eval_every = 500
    c.eval_batch_size = 128
    c.log_every = 25
    c.checkpoint_every = 500
  if a.cpu60:
    # A model worth keeping from 60 minutes of a 2-core CPU (docs/recognition.md): the same
    # encoders as `cpu` (valid init_from of seqclr.py:cpu / siman.py:cpu / dig.py:cpu), the task
    # of the test lines (60% words, the rest numbers and mixed strings), this project's mild
    # augmentation against unseen fonts, a short warm-up (2%) so that CTC leaves its blank
    # plateau early, gradient clipping 5 (the clovaai recipe), 1,000 held-out validation lines.
    # ResNet: ~127 img/s on the quiet 2-core machine with the allocator of allocator.py
    # (~92 without; 2000 x 32 in 11.6 min) -> 6000 x 64; ViT: ~24 img/s (2000 x 32 in ~45 min)
    # -> 2500 x 32.
    resnet = c.model.name == "resnet"
    c.data.word_prob = 0.6
    c.augment, c.augment_recipe = True, "mild"
    c.val_data.num_samples, c.val_data.word_prob = 1000, 0.6
    c.batch_size = 64 if resnet else 32
    c.total_steps = 6000 if resnet else 2500
    c.optim.update(
      base_lr=1.5e-3 if resnet else 1e-3, warmup_steps=0, warmup_fraction=0.02, grad_clip=5.0
    )
    c.eval_every = c.checkpoint_every = 1000 if resnet else 500
  if a.smoke:
    c.model.update(
      cu.vit_size(vit.SIZES, "smoke"),  # = dig.py:smoke
      drop_path_rate=0.0,
      dropout_rate=0.0,
      attn_dropout_rate=0.0,
    )
    c.model.update(
      channels=32, blocks=(1, 1, 1, 1), lstm_hidden=16, lstm_layers=1, tps=False, tps_channels=32
    )  # = seqclr.py:smoke
    c.attention.update(hidden_dim=32, attention_dim=32)
    c.transformer.update(d_model=32, num_layers=1, num_heads=2, mlp_dim=64, dropout_rate=0.0)
    # The older heads and loss (the tests of export and overfitting were built on them); the
    # release's ones have tests of their own (test_decoders, test_recognition).
    c.transformer.style, c.ctc.head, c.ctc.hidden_dim, c.loss_norm = "nrtr", "linear", 32, "token"
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

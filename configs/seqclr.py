r"""SeqCLR pretraining: sequence-to-sequence contrast on window instances (CNN + BiLSTM).

Variants (`--config=configs/seqclr.py:VARIANT`, comma-separated, big_vision style):
  (none)      the paper-like recipe for accelerators: TPS + ResNet (512) + 2-layer BiLSTM (256),
              global batch 256, window-to-instance with 5 windows, temperature 0.1;
  cpu         README quick-start: a narrow ResNet (128) + 1 BiLSTM layer (64), no TPS, on the
              synthetic lines; a few minutes on a 2-core CPU; the representation probe
              every 50 steps (docs/probe.md);
  smoke       a tiny encoder, a few steps, under a minute on a CPU (tests and checks);
  tps=BOOL    TPS rectification on/off with any variant (default: on, off for cpu/smoke).

The method's fields (methods/seqclr.py):
  instance_mapping       all | frame | window           (paper: window is best)
  num_windows            windows for `window` (default 5; T = 33 frames need not divide)
  projection             none | bilstm | mlp (per frame), applied before the instance mapping
  proj_hidden_dim        BiLSTM hidden size / MLP hidden width of the projection head
  proj_dim               projection output width
  seqclr_encoder_stage   cnn (CNN only, no BiLSTM in the pretrained encoder) | lstm
  temperature            NT-Xent temperature (0.1)

The encoder (`model.name = "resnet"`, models/resnet.py):
  model.channels        ResNet output width C (512); stages C/4, C/2, C, C, stem C/16, C/8
  model.blocks          basic blocks per stage ((1, 2, 5, 3))
  model.lstm_hidden     BiLSTM hidden size per direction = output width (256)
  model.lstm_layers     BiLSTM layers (2; 0 = CNN features, width C)
  model.tps             TPS rectification in front (bool)
  model.num_fiducials   TPS fiducial points (20)
  model.tps_channels    width of the TPS localization CNN (512)
  model.remat           none | full | save_dots: rematerialise each basic block (models/encoders.py)
The same `model` block in configs/finetune.py (with `model.name=resnet`) fine-tunes it.

Every field can be overridden: `--config.instance_mapping=frame --config.total_steps=2000`.
Learning rate: the paper gives none for pretraining in our notes (docs/seqclr.md);
ours is AdamW, peak 1e-3 x batch/256, 2000 warm-up steps, cosine to 1e-5, gradient clipping 5
(the clovaai recipe's clip).
"""

from sslocr_jax import config_utils as cu
from sslocr_jax.models import resnet
import ml_collections


def get_config(arg=None):
  a = cu.parse_arg(arg, cpu=False, smoke=False, tps="auto")
  small = a.cpu or a.smoke
  tps = (not small) if a.tps == "auto" else a.tps.lower() in ("1", "true", "yes")
  c = cu.header("pretrain", "seqclr", batch_size=256)

  # Data: the built-in synthetic lines (2M virtual samples) unless data.source says otherwise.
  c.image_height, c.image_width = 32, 128

  # Encoder (models/resnet.py): TPS + ResNet + 2-layer BiLSTM, 33 frames for 32x128.
  c.model = ml_collections.ConfigDict(cu.resnet_model(resnet.SIZE, tps))

  # SeqCLR objective (names as in the paper).
  c.seqclr_encoder_stage = "lstm"
  c.projection = "mlp"
  c.proj_hidden_dim = 256
  c.proj_dim = 128
  c.instance_mapping = "window"
  c.num_windows = 5
  c.temperature = 0.1

  c.optim = ml_collections.ConfigDict(
    dict(
      name="adamw",
      base_lr=1e-3,
      lr_batch_base=256,
      warmup_steps=2000,
      end_lr=1e-5,
      weight_decay=1e-4,
      b1=0.9,
      b2=0.999,
      grad_clip=5.0,
    )
  )

  cu.add_run_fields(c, checkpoint_every=1000)
  cu.add_probe_fields(c)  # the representation probe (docs/probe.md): off, on in `cpu`

  if a.cpu:
    c.model.update(channels=64, blocks=(1, 2, 5, 3), lstm_hidden=64, lstm_layers=1, tps_channels=64)
    c.proj_hidden_dim, c.proj_dim = 128, 64
    c.data = cu.synthetic_data(num_samples=200_000, num_workers=0)
    c.batch_size = 32
    c.total_steps = 300
    c.optim.update(base_lr=2e-3, lr_batch_base=0, warmup_steps=20, end_lr=1e-5)
    c.log_every = 10
    c.checkpoint_every = 100
    c.viz_every = 100
    c.probe_every = 50  # half-size probes, ~3 steps of CPU each (docs/probe.md)
    c.probe.update(train_samples=512, eval_samples=256)
  if a.smoke:
    c.model.update(channels=32, blocks=(1, 1, 1, 1), lstm_hidden=16, lstm_layers=1, tps_channels=32)
    c.proj_hidden_dim, c.proj_dim = 32, 16
    c.data = cu.synthetic_data(num_samples=512, num_workers=0)
    c.batch_size = 8
    c.total_steps = 12
    c.optim.update(base_lr=1e-2, lr_batch_base=0, warmup_steps=2, end_lr=1e-4)
    c.log_every = 2
    c.checkpoint_every = 6
    c.viz_every = 12
  return c

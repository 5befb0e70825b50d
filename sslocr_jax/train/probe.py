"""The representation probe of a pretraining run: a linear CTC head on the frozen encoder.

At step 0 of a fresh run (the untrained encoder: the curve's floor), every `config.probe_every`
steps and at the last step, the loop (train/loop.py) calls `Probe(state)`:

    frames = method.probe_features(params, model_state, images)   [N, T, D] frozen, inference
    x      = (frames - mean) / std          per channel, statistics of the probe's train lines
    logits = Linear(D, C)(x)                [N, T, C]   (models/decoders.py CtcDecoder "linear")
    head   = `probe.steps` Adam steps of CTC (blank = PAD) on batches of `probe.train_samples`
             lines, from the same seed at every probe
    probe_accuracy, probe_one_minus_ned = greedy CTC on `probe.eval_samples` other lines, word
             accuracy and 1 - NED in percent (data/metrics.py, lower36 scoring)

Only the head learns, so the figures follow the representation: a rising curve means the
pretraining still improves what a recognizer reads. The probe reads the state and never writes
it, draws no batch from the training iterator and no key from the state's rng: a run with the
probe trains bit for bit the run without it (tests/test_probe.py). Its lines are rendered once
per run (synthetic lines in held-out fonts, config_utils.add_probe_fields) and kept in memory;
the head's whole training and scoring is one jitted function, compiled once per run.
"""

import functools
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from sslocr_jax import errors
from sslocr_jax.data import augment
from sslocr_jax.data import charset as charset_lib
from sslocr_jax.data import metrics
from sslocr_jax.data import sources
from sslocr_jax.models import decoders
from sslocr_jax.train import evaluation

MAX_LEN = 25  # the longest label of an automatic `probe.max_len` (the renderer's longest line)
METRICS = ("probe_accuracy", "probe_one_minus_ned")


def every(config) -> int:
  """`config.probe_every` (0 = no probe)."""
  return int(config.get("probe_every", 0) or 0)


def enabled(method, config) -> bool:
  """Whether the run probes: `probe_every` > 0 and the method declares `probe_features`."""
  return every(config) > 0 and hasattr(method, "probe_features")


def render_sets(probe_config, cs, max_len: int, height: int, width: int) -> dict:
  """The probe's fixed lines: {"train" | "eval": (images uint8 [n, H, W, 3], labels int32
  [n, max_len + 1], texts [n])}, the first usable lines of `probe_config.data` in index
  order (labels `cs` encodes within `max_len`), the train lines first."""
  sizes = {"train": int(probe_config.train_samples), "eval": int(probe_config.eval_samples)}
  need = sum(sizes.values())
  source = sources.make_source(probe_config.data)
  images, labels, texts = [], [], []
  for i in range(len(source)):
    record = source[i]
    if record is None or cs.check(record["label"], max_len) is not None:
      continue
    images.append(augment.resize(record["image"], height, width))
    labels.append(cs.encode(record["label"], max_len))
    texts.append(record["label"])
    if len(texts) == need:
      break
  if len(texts) < need:
    raise errors.UserError(
      f"config.probe.data holds {len(texts)} usable lines (labels in charset "
      f"{probe_config.charset!r}, at most {max_len} characters); the probe needs "
      f"train_samples + eval_samples = {need}"
    )
  n = sizes["train"]
  images, labels = np.stack(images), np.stack(labels).astype(np.int32)
  return {
    "train": (images[:n], labels[:n], texts[:n]),
    "eval": (images[n:], labels[n:], texts[n:]),
  }


def fit_and_decode(x_train, y_train, x_eval, key, *, num_classes, steps, batch_size, lr, cs):
  """Trains the linear CTC head on x_train [N, T, D] / y_train int32 [N, L] with Adam, then
  greedy-decodes x_eval [M, T, D] -> ids int32 [M, L] (characters, EOS, PAD...)."""
  head = decoders.CtcDecoder(num_classes=num_classes, grid_h=1, head="linear")
  k_init, k_batch = jax.random.split(key)
  params = nn.unbox(head.init(k_init, x_train[:1])["params"])
  tx = optax.adam(lr)

  def loss(p, x, y):
    nll = decoders.ctc_loss(head.apply({"params": p}, x), y, blank=cs.pad, eos=cs.eos, pad=cs.pad)
    lengths = jnp.sum((y != cs.eos) & (y != cs.pad), axis=1)
    return jnp.mean(nll / jnp.maximum(lengths, 1))  # per character, as recognition's "token"

  def step(i, carry):
    p, opt = carry
    rows = jax.random.randint(jax.random.fold_in(k_batch, i), (batch_size,), 0, x_train.shape[0])
    grads = jax.grad(loss)(p, x_train[rows], y_train[rows])
    updates, opt = tx.update(grads, opt, p)
    return optax.apply_updates(p, updates), opt

  params, _ = jax.lax.fori_loop(0, steps, step, (params, tx.init(params)))
  ids, _ = decoders.ctc_greedy(
    head.apply({"params": params}, x_eval),
    blank=cs.pad,
    eos=cs.eos,
    pad=cs.pad,
    length=y_train.shape[1],
  )
  return ids


class Probe:
  """`probe(state) -> {"probe_accuracy": %, "probe_one_minus_ned": %}` (see the module doc).

  The lines are rendered and the functions built at the first call (the frames' length T,
  hence the automatic `max_len`, comes from the state's encoder). With several processes
  every process calls it (the encoder's features are a collective) and gets the same figures.
  `seconds`: the wall time of the last call.
  """

  def __init__(self, method, config, mesh):
    self.method, self.config, self.mesh = method, config, mesh
    self.every = every(config)
    pc = config.probe
    self.cs = charset_lib.Charset.named(pc.get("charset", "lower36"), oov="drop")
    self.width = int(pc.get("image_width", 0) or config.image_width)
    if self.width != config.image_width and config.model.get("name") == "vit":
      raise errors.UserError(
        f"config.probe.image_width={self.width}: a ViT encoder reads only its own "
        f"config.image_width={config.image_width}; allowed: 0 or {config.image_width}"
      )
    self.sets, self.seconds = None, 0.0

  def _prepare(self, state) -> None:
    pc, config = self.config.probe, self.config
    features = functools.partial(self.method.probe_features, config=config)
    image = jax.ShapeDtypeStruct((1, config.image_height, self.width, 3), jnp.uint8)
    frames = jax.eval_shape(features, state.params, state.model_state, image).shape[1]
    max_len = int(pc.get("max_len", 0) or min(MAX_LEN, frames // 2))
    self.sets = render_sets(pc, self.cs, max_len, config.image_height, self.width)
    self.encode = evaluation.make_batch_runner(
      features,
      config,
      self.mesh,
      int(pc.get("encode_batch_size", 128)),
      gather=True,
      width=self.width,
    )
    self.fit = jax.jit(
      functools.partial(
        fit_and_decode,
        num_classes=self.cs.num_classes,
        steps=int(pc.steps),
        batch_size=int(pc.batch_size),
        lr=float(pc.lr),
        cs=self.cs,
      )
    )
    self.device = jax.local_devices()[0]  # the head runs on one device of each process

  def frames(self, state, images) -> np.ndarray:
    """images uint8 [n, H, W, 3] -> the frozen frames float32 [n, T, D] (numpy)."""
    b = self.encode.batch_size
    return np.concatenate(
      [
        self.encode(state.params, state.model_state, images[i : i + b])
        for i in range(0, len(images), b)
      ]
    )

  def __call__(self, state) -> dict:
    t0 = time.time()
    if self.sets is None:
      self._prepare(state)
    jax.block_until_ready(state.params)  # the last train step first (see make_evaluator)
    x_train, y_train, _ = self.sets["train"]
    x_eval, _, texts = self.sets["eval"]
    x_train, x_eval = self.frames(state, x_train), self.frames(state, x_eval)
    # Standardised per channel (the train lines' statistics): the same head lr suits encoders
    # whose features differ in scale by orders of magnitude (MIM, contrastive, GAN).
    mean = x_train.mean(axis=(0, 1), dtype=np.float64)
    std = x_train.std(axis=(0, 1), dtype=np.float64) + 1e-6
    x_train, x_eval = (((x - mean) / std).astype(np.float32) for x in (x_train, x_eval))
    key = jax.random.PRNGKey(int(self.config.probe.get("seed", 0)))
    args = jax.device_put((x_train, y_train, x_eval, key), self.device)
    ids = np.asarray(self.fit(*args))
    report = metrics.score([self.cs.decode(row) for row in ids], texts).report()
    self.seconds = time.time() - t0
    return {"probe_accuracy": report["accuracy"], "probe_one_minus_ned": report["one_minus_ned"]}

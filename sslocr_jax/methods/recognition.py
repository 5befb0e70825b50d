"""Supervised text recognition: fine-tuning, decoder evaluation and training from scratch.

    features = encoder(augment(image))                       [B, N, D] (models/encoders.py)
    ctc:          logits = CtcDecoder(features)              [B, T, C]  CTC loss (blank = PAD)
    attention /   logits = decoder(features, [BOS, y[:-1]])  [B, L, C]  cross-entropy on the
    transformer:                                             characters and the EOS (not PAD)

with L = max_len + 1 and C = charset.num_classes (data/charset.py). Protocols (config):
  full fine-tuning      phases = [("main", ["encoder", "decoder"])];
  frozen encoder        `freeze_encoder=True`: the encoder is in no phase (bit-identical), runs
                        in inference mode (no drop path / dropout, BatchNorm statistics kept);
  init_from=PATH        anything train/resolve.py resolves (a pretraining or fine-tuning
                        workdir / checkpoint folder, an exported or official state dict): only
                        the encoder weights are taken (`load_pretrained`, called by the loop on
                        a fresh run); a mismatch is an error naming every differing key;
  data.fraction         a deterministic labeled subset (data/pipeline.py).

Views (host): `image` uint8 [32, 128, 3] (`augment_recipe`: "dig", the release's ABINet chain, or
"mild", ours; a plain resize with `augment=False`) and `label` int32 [L] (ids, EOS, PAD...). A label that is empty, longer
than `max_len`, or (oov="drop") has characters outside the charset is dropped: `make_views`
returns None (the pipeline skips it), logs a warning naming the record (LMDB folder and record
number) and counts it in `DROPPED` (per process; reason -> count) and in the bad-record
summaries (`sources.note_bad`).

Evaluation (train/evaluation.py, run by the loop every `eval_every` steps because the method
declares `predict`): greedy decoding on `config.val_data` (by default synthetic lines in
held-out fonts), word accuracy after the standard filtering, in percent (`val_accuracy`), and
1 - NED in percent (`val_one_minus_ned`).

Networks (params): encoder, decoder. model_state: {"batch_stats": {"encoder": ...}} for encoders
with BatchNorm (resnet; the layout of methods/seqclr.py), else {}.
"""

import collections
import functools
import logging
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from sslocr_jax import config_utils
from sslocr_jax import errors
from sslocr_jax import posembed
from sslocr_jax.data import augment
from sslocr_jax.data import charset as charset_lib
from sslocr_jax.data import sources
from sslocr_jax.methods import common
from sslocr_jax.models import decoders
from sslocr_jax.models import encoders
from sslocr_jax.models import resnet
from sslocr_jax.models import torch_mapping

# config.augment_recipe -> chain: dig = the release's (dataset_lmdb.py `use_abi_aug`); mild = ours.
AUGMENT_RECIPES = {"dig": augment.dig_recognition_augment, "mild": augment.recognition_augment}
LOSS_NORMS = ("word", "token")  # config.loss_norm
DROPPED = collections.Counter()  # reason -> number of training labels dropped (this process)
_WARN_FIRST = 20  # full warnings per reason; afterwards one every 1000 drops


# ----------------------------------------------------------------------------- charset
@functools.lru_cache(maxsize=16)
def _charset(name: str, oov: str) -> charset_lib.Charset:
  if name in charset_lib.NAMED:
    return charset_lib.Charset.named(name, oov=oov)
  if os.path.isfile(name):
    return charset_lib.Charset.from_file(name, oov=oov)
  raise errors.UserError(
    f"config.charset={name!r} is neither a named charset "
    f"({', '.join(sorted(charset_lib.NAMED))}) nor a file (one character per line)"
  )


def charset_from_config(config) -> charset_lib.Charset:
  """`config.charset` (a name of charset.NAMED or a file) with the `config.oov` policy."""
  return _charset(config.get("charset", "printable94"), config.get("oov", "drop"))


def label_length(config) -> int:
  """L = max_len + 1: the decoded / target sequence length (room for the EOS)."""
  return int(config.max_len) + 1


# ----------------------------------------------------------------------------- views (host)
def _drop(record, label, reason: str) -> None:
  """Counts a dropped label; the warning names the record (LMDB folder and record number when
  the source gives them, else the source index), and the bad-record summaries count it."""
  DROPPED[reason] += 1
  n = DROPPED[reason]
  folder = record.get("source", "data")
  number = record.get("record", record.get("index", "?"))
  sources.note_bad(folder, number, f"label dropped ({reason})")
  if n <= _WARN_FIRST or n % 1000 == 0:
    where = (
      f"LMDB {folder} record {number}"
      if "record" in record
      else f"record {record.get('index', '?')}"
    )
    logging.warning(
      "recognition: %s dropped (label %r: %s); %d labels dropped for this reason so far",
      where,
      label[:60],
      reason,
      n,
    )


def make_views(record, rng: np.random.Generator, config) -> dict | None:
  """record {"image", "label", "index"} -> {image uint8 [H, W, 3], label int32 [L]} or None."""
  cs = charset_from_config(config)
  label = record["label"]
  reason = cs.check(label, config.max_len)
  if reason is not None:
    _drop(record, label, reason)
    return None
  h, w = config.image_height, config.image_width
  image = (
    AUGMENT_RECIPES[config.get("augment_recipe", "mild")](record["image"], rng, h, w)
    if config.get("augment", True)
    else augment.resize(record["image"], h, w)
  )
  return {"image": image, "label": cs.encode(label, config.max_len)}


def eval_views(record, rng, config) -> dict:
  """record -> {image uint8 [H, W, 3] (resized), text (the label, as is), index}."""
  del rng
  return {
    "image": augment.resize(record["image"], config.image_height, config.image_width),
    "text": np.asarray(record["label"]),
    "index": np.asarray(record["index"], np.int64),
  }


# ----------------------------------------------------------------------------- networks
def encoder_module(config):
  """(encoder module, grid_h): `config.model`'s encoder; with `decoder_bilstm_layers` > 0 its
  BiLSTM (if any) moves to the decoder side, so a ResNet is built without it."""
  encoder, grid_h = encoders.build(config)
  if config.get("decoder_bilstm_layers", 0) and hasattr(encoder, "lstm_layers"):
    encoder = encoder.clone(lstm_layers=0)
  return encoder, grid_h


def sequence_module(config):
  """The decoder-side BiLSTM stack (`decoder_bilstm_layers` > 0, width `model.lstm_hidden`) or
  None: frames [B, T, D] -> [B, T, lstm_hidden], trained with the decoder (also when the
  encoder is frozen)."""
  layers = int(config.get("decoder_bilstm_layers", 0) or 0)
  if not layers:
    return None
  return resnet.BiLSTMStack(
    int(config.model.get("lstm_hidden", 256)),
    layers,
    dtype=encoders.compute_dtype(config),
  )


def networks(config):
  """(encoder module, grid_h, decoder module) of the config; grid_h is that of the features
  the decoder reads (1 after a decoder-side BiLSTM)."""
  encoder, grid_h = encoder_module(config)
  if sequence_module(config) is not None:
    grid_h = 1
  decoder = decoders.from_config(config, charset_from_config(config).num_classes, grid_h)
  return encoder, grid_h, decoder


def decoder_inputs(labels, bos: int):
  """Teacher forcing: labels [B, L] -> [BOS, y_0, ..., y_{L-2}]."""
  return jnp.concatenate([jnp.full((labels.shape[0], 1), bos, labels.dtype), labels[:, :-1]], 1)


def init_variables(config, rng, batch) -> dict:
  encoder, _ = encoder_module(config)
  _, _, decoder = networks(config)
  k_enc, k_dec = jax.random.split(rng)
  x = common.normalize(batch["image"])
  features, enc_vars = encoder.init_with_output({"params": k_enc, "dropout": k_enc}, x, train=False)
  enc_params = enc_vars["params"]
  enc_vars = {
    col: tree
    for col, tree in enc_vars.items()  # e.g. batch_stats; not sown values
    if col not in ("params", "intermediates")
  }
  params = {"encoder": enc_params}
  seq = sequence_module(config)
  if seq is not None:
    frames = encoders.to_frames(features, encoders.build(config)[1])
    params["sequence"] = seq.init(jax.random.fold_in(k_dec, 1), frames)["params"]
    features = seq.apply({"params": params["sequence"]}, frames)
  if config.decoder == "ctc":
    dec_vars = decoder.init(k_dec, features)
  else:
    labels = jnp.zeros((x.shape[0], label_length(config)), jnp.int32)
    dec_vars = decoder.init(k_dec, features, labels)
  model_state = {col: {"encoder": tree} for col, tree in enc_vars.items()}
  params["decoder"] = dec_vars["params"]
  return {"params": params, "model_state": model_state}


def phases(config):
  """The trained networks: the decoder (and its BiLSTM, if any) [and the encoder]."""
  dec = (["sequence"] if sequence_module(config) is not None else []) + ["decoder"]
  if config.get("freeze_encoder", False):
    return [("main", dec)]
  return [("main", ["encoder"] + dec)]


def encoder_state(model_state) -> dict:
  """{collection: encoder's tree} out of model_state {collection: {"encoder": tree, ...}}."""
  return {
    col: v["encoder"] for col, v in model_state.items() if isinstance(v, dict) and "encoder" in v
  }


def encode(params, model_state, images, config, *, train: bool, rng=None):
  """images uint8 [B, H, W, 3] -> (features [B, N, D], the encoder's new {collection: tree}).

  With `freeze_encoder` the encoder always runs in inference mode, without gradients. With a
  decoder-side BiLSTM (`decoder_bilstm_layers`) the features are its output [B, T, H].
  """
  encoder, grid_h = encoder_module(config)
  frozen = config.get("freeze_encoder", False)
  train = train and not frozen
  enc_state = encoder_state(model_state)
  variables = {"params": params["encoder"], **enc_state}
  rngs = {"dropout": rng} if (train and rng is not None) else {}
  x = common.normalize(images)
  if train and enc_state:
    features, updates = encoder.apply(variables, x, train=True, rngs=rngs, mutable=list(enc_state))
    enc_state = {**enc_state, **updates}
  else:
    features = encoder.apply(variables, x, train=train, rngs=rngs)
  if frozen:
    features = jax.lax.stop_gradient(features)
  seq = sequence_module(config)
  if seq is not None:
    features = seq.apply({"params": params["sequence"]}, encoders.to_frames(features, grid_h))
  return features, enc_state


# ----------------------------------------------------------------------------- loss
def sequence_accuracy(ids, labels, pad: int):
  """Percent of rows whose ids equal the labels at every non-PAD label position."""
  ok = jnp.all((ids == labels) | (labels == pad), axis=1)
  return 100.0 * jnp.mean(ok.astype(jnp.float32))


def sequence_loss(token_losses, mask, norm: str):
  """token_losses, mask float32 [B, L] -> scalar.

  word:  sum over each word's tokens, mean over the words (the release's SeqCrossEntropyLoss,
         loss/seqCrossEntropyLoss.py: sample_normalize; a longer word weighs more);
  token: mean over all the batch's tokens (this project's older default).
  """
  if norm not in LOSS_NORMS:
    raise ValueError(f"config.loss_norm={norm!r} is unknown; valid: {', '.join(LOSS_NORMS)}")
  total = jnp.sum(token_losses * mask)
  if norm == "word":
    return total / token_losses.shape[0]
  return total / jnp.maximum(jnp.sum(mask), 1.0)


def loss_fn(params, model_state, batch, rng, *, step, phase, config):
  """Recognition loss on a global batch -> (loss, (metrics, new model_state))."""
  del step, phase
  cs = charset_from_config(config)
  _, _, decoder = networks(config)
  enc_rng, dec_rng = jax.random.split(rng)
  features, enc_state = encode(params, model_state, batch["image"], config, train=True, rng=enc_rng)
  labels = batch["label"]
  dec_vars = {"params": params["decoder"]}
  word_norm = config.get("loss_norm", "token") == "word"
  if config.decoder == "ctc":
    logits = decoder.apply(dec_vars, features, train=True)
    nll = decoders.ctc_loss(logits, labels, blank=cs.pad, eos=cs.eos, pad=cs.pad)
    lengths = jnp.sum((labels != cs.eos) & (labels != cs.pad), axis=1)
    loss = jnp.mean(nll if word_norm else nll / jnp.maximum(lengths, 1))  # token: PyTorch's
    ids, _ = decoders.ctc_greedy(
      logits, blank=cs.pad, eos=cs.eos, pad=cs.pad, length=labels.shape[1]
    )
  else:
    logits = decoder.apply(
      dec_vars, features, decoder_inputs(labels, cs.bos), train=True, rngs={"dropout": dec_rng}
    )
    smoothing = float(config.get("label_smoothing", 0.0))
    targets = optax.smooth_labels(jax.nn.one_hot(labels, cs.num_classes), smoothing)
    ce = optax.softmax_cross_entropy(logits, targets)
    mask = (labels != cs.pad).astype(jnp.float32)  # characters and the EOS
    loss = sequence_loss(ce, mask, config.get("loss_norm", "token"))
    ids = jnp.argmax(logits, axis=-1).astype(jnp.int32)  # teacher-forced
  metrics_ = {"train_accuracy": sequence_accuracy(ids, labels, cs.pad)}
  new_state = dict(model_state)
  for col, tree in enc_state.items():
    new_state[col] = {**model_state[col], "encoder": tree}
  return loss, (metrics_, new_state)


def after_update(params, model_state, step, config):
  del params, step, config
  return model_state


# ----------------------------------------------------------------------------- inference
def predict(params, model_state, images, config):
  """Greedy recognition: images uint8 [B, H, W, 3] -> (ids int32 [B, L], confidence [B])."""
  cs = charset_from_config(config)
  _, _, decoder = networks(config)
  features, _ = encode(params, model_state, images, config, train=False)
  dec_vars = {"params": params["decoder"]}
  length = label_length(config)
  if config.decoder == "ctc":
    return decoders.ctc_greedy(
      decoder.apply(dec_vars, features), blank=cs.pad, eos=cs.eos, pad=cs.pad, length=length
    )
  return decoders.greedy_decode(
    decoder, dec_vars, features, length=length, bos=cs.bos, eos=cs.eos, pad=cs.pad
  )


def ctc_logits(params, model_state, images, config):
  """The CTC decoder's frame logits: images uint8 [B, H, W, 3] -> float32 [B, T, C] (for
  decoding on the host, e.g. models/ctc_lexicon.py)."""
  if config.decoder != "ctc":
    raise ValueError(f"decoder={config.decoder!r} has no CTC frames (a lexicon needs decoder=ctc)")
  _, _, decoder = networks(config)
  features, _ = encode(params, model_state, images, config, train=False)
  return decoder.apply({"params": params["decoder"]}, features)


# ----------------------------------------------------------------------------- init_from
def _flat(tree) -> dict:
  """{"a/b/c": leaf} of a nested dict."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    out["/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path)] = leaf
  return out


def encoder_mismatches(source: dict, target: dict, show: int = 8) -> list[str]:
  """Lines naming the keys of another shape, missing or unexpected (source vs target), at most
  `show` of each kind plus a count of the rest; [] when the trees match."""
  src, tgt = _flat(source), _flat(target)
  kinds = [
    [
      f"  shape {k}: checkpoint {tuple(np.shape(src[k]))} vs model {tuple(np.shape(v))}"
      for k, v in tgt.items()
      if k in src and np.shape(src[k]) != np.shape(v)
    ],
    [f"  missing in checkpoint: {k} {tuple(np.shape(v))}" for k, v in tgt.items() if k not in src],
    [f"  not in model: {k} {tuple(np.shape(v))}" for k, v in src.items() if k not in tgt],
  ]
  lines = []
  for kind in kinds:
    lines += kind[:show] + ([f"  ... and {len(kind) - show} more"] if len(kind) > show else [])
  return lines


INIT_FROM = "encoder"  # of a PyTorch state dict, only the encoder is read (train/resolve.py)


def load_pretrained(state, config, source):
  """Copies the encoder (params, and BatchNorm statistics if any) of the resolved checkpoint
  `source` (train/resolve.py `Checkpoint`: params, model_state, origin) of `config.init_from`.

  Called by the train loop on a fresh run (not on resume). Raises ValueError listing every
  mismatched key / shape and saying which method and model size wrote the checkpoint.
  """
  path = config.get("init_from", "")
  params = source.params
  if "encoder" not in params:
    raise ValueError(
      f"config.init_from={path}: the checkpoint has no 'encoder' params "
      f"(networks: {sorted(params)}). {source.origin}"
    )
  src, target = params["encoder"], nn.unbox(state.params["encoder"])
  problems = encoder_mismatches(src, target)
  if problems:
    want = config_utils.describe_model(config.model)
    raise ValueError(
      f"config.init_from={path}: the checkpoint's encoder does not match config.model "
      f"({want}):\n"
      + "\n".join(problems)
      + (f"\nThe checkpoint was written by {source.origin}." if source.origin else "")
      + "\nSet --config.model.* (or the config variant / size) to the checkpoint's encoder."
    )

  def put(a, tgt):
    return jax.device_put(np.asarray(a, tgt.dtype), tgt.sharding)

  new_params = {**state.params, "encoder": jax.tree.map(put, src, target)}
  model_state = dict(state.model_state)
  enc_state = encoder_state(model_state)
  src_enc_state = {
    col: tree for col, tree in encoder_state(source.model_state or {}).items() if col in enc_state
  }  # e.g. batch_stats, not DiG's "ema" copies
  if enc_state and src_enc_state and not encoder_mismatches(src_enc_state, enc_state):
    for col, tree in jax.tree.map(put, src_enc_state, enc_state).items():
      model_state[col] = {**model_state[col], "encoder": tree}
  elif enc_state:
    logging.warning(
      "init_from=%s: no matching encoder statistics (%s) in the checkpoint; keeping the fresh ones",
      path,
      sorted(enc_state),
    )
  logging.info("init_from=%s: loaded %d encoder arrays", path, len(_flat(src)))
  return state.replace(params=new_params, model_state=model_state)


# ----------------------------------------------------------------------------- export
def example_batch(config, size: int = 2) -> dict:
  """Zeros shaped like a training batch (for the shapes of `init_variables`)."""
  return {
    "image": jnp.zeros((size, config.image_height, config.image_width, 3), jnp.uint8),
    "label": jnp.zeros((size, label_length(config)), jnp.int32),
  }


def transformer_style(config) -> str:
  """ "nrtr" (default) or "dig" for the transformer decoder, "" for another decoder."""
  if config.get("decoder") != "transformer":
    return ""
  return (config.get("transformer", None) or {}).get("style", "nrtr") or "nrtr"


def export_networks(config) -> tuple[list, dict]:
  """The recognizer beyond the encoder, for models/torch_mapping.py: ([(torch prefix,
  [jax roots], style)], {torch key: fixed table}); the official DiG fine-tuned `RecModel`
  layout for transformer.style="dig" (its decoder stores the sin-cos position table)."""
  decoder = config.get("decoder")
  if sequence_module(config) is not None:
    raise ValueError(
      "export of a decoder-side BiLSTM (config.decoder_bilstm_layers > 0) is not "
      "supported yet; export the encoder alone with --include=encoder"
    )
  specs, fixed = [], {}
  if transformer_style(config) == "dig":
    specs.append(("encoder.norm.", ["params/decoder/encoder_norm"], "transformer"))
    t = config.transformer
    fixed[torch_mapping.DIG_TABLE_KEY] = posembed.dig_position_table(
      int(t.get("n_position", 200)), int(t.d_model)
    )[None]
  if decoder == "transformer":
    specs.append(("linear_norm.", ["params/decoder/linear_norm"], "transformer"))
  specs.append(("decoder.", ["params/decoder"], decoder))
  return specs, fixed


def export_metadata(config) -> dict:
  """Fields of the exported model JSON (export/cli.py) that rebuild the decoder and charset."""
  cs = charset_from_config(config)
  return dict(
    decoder=config.decoder,
    decoder_config=config.get(config.decoder, None) or {},
    num_classes=cs.num_classes,
    charset=config.get("charset", "printable94"),
    max_len=int(config.max_len),
    bos=cs.bos,
    eos=cs.eos,
    pad=cs.pad,
    chars=cs.chars,
  )  # decoding ids without this package (docs/export.md)

"""Batched greedy recognition on the device(s), and word-accuracy evaluation of a recognizer.

Used by the train loop (validation every `eval_every` steps of a method that declares
`predict`), predict.py (`Recognizer`) and evaluate/benchmarks.py. A recognizer method declares
(docs/interfaces.md): `predict(params, model_state, images uint8 [B, H, W, 3], config) ->
(ids int32 [B, L], confidence [B])`, `eval_views(record, rng, config)` and
`charset_from_config(config)` (ids -> text).
"""

import functools

from absl import logging
import jax
import numpy as np

from sslocr_jax.data import metrics
from sslocr_jax.data import pipeline
from sslocr_jax.train import sharding as sharding_lib


def make_batch_predictor(method, config, mesh, batch_size: int):
  """Returns `fn(params, model_state, images uint8 [n <= B, H, W, 3]) -> (ids [n, L], conf [n])`.

  Every call runs one fixed-size batch (the last one zero-padded), so the jitted function
  compiles once. `batch_size` is rounded up to a multiple of the device count.
  """
  n_dev = mesh.size
  batch_size = -(-int(batch_size) // n_dev) * n_dev
  fn = jax.jit(functools.partial(method.predict, config=config))

  def predict_batch(params, model_state, images):
    images = np.asarray(images, np.uint8)
    n = images.shape[0]
    if n > batch_size:
      raise ValueError(f"batch of {n} images > batch size {batch_size}")
    padded = np.zeros((batch_size,) + images.shape[1:], np.uint8)
    padded[:n] = images
    x = sharding_lib.global_batch({"image": padded}, mesh)["image"]
    ids, conf = jax.device_get(fn(params, model_state, x))
    return np.asarray(ids)[:n], np.asarray(conf)[:n]

  predict_batch.batch_size = batch_size
  predict_batch.jitted = fn
  return predict_batch


def eval_dataset(method, config, data_config, batch_size: int):
  """Un-augmented, unshuffled, single-pass batches {image, text, index} of `data_config`."""
  return pipeline.make_dataset(config, method.eval_views, data_config=data_config,
                               batch_size=batch_size, shuffle=False, repeat=False,
                               drop_remainder=False, num_workers=0)


def evaluate_batches(predict_batch, params, model_state, batches, charset) -> metrics.Counts:
  """Greedy predictions on batches {image, text} -> summed word-accuracy / NED counts."""
  counts = metrics.Counts()
  for batch in batches:
    ids, _ = predict_batch(params, model_state, batch["image"])
    preds = [charset.decode(row) for row in ids]
    counts += metrics.score(preds, [str(t) for t in batch["text"]])
  return counts


def make_evaluator(method, config, mesh):
  """`fn(state) -> {"val_accuracy": %, "val_one_minus_ned": %}` on `config.val_data`.

  Single process only: with several processes it warns once and returns {} (no validation).
  """
  if jax.process_count() > 1:
    logging.warning("%s: validation during training runs in a single process; skipped "
                    "(evaluate the checkpoints with configs/evaluate.py)", config.method)
    return lambda state: {}
  cs = method.charset_from_config(config)
  batch_size = int(config.get("eval_batch_size", 0) or config.batch_size)
  predict_batch = make_batch_predictor(method, config, mesh, batch_size)

  def evaluate(state) -> dict:
    # Let the last train step finish first: interleaving two programs' collectives can stall
    # XLA's CPU backend (fake devices).
    jax.block_until_ready(state.params)
    batches = eval_dataset(method, config, config.val_data, predict_batch.batch_size)
    counts = evaluate_batches(predict_batch, state.params, state.model_state, batches, cs)
    r = counts.report()
    return {"val_accuracy": r["accuracy"], "val_one_minus_ned": r["one_minus_ned"]}
  return evaluate

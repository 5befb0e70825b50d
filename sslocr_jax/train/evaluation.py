"""Batched greedy recognition on the device(s), and word-accuracy evaluation of a recognizer.

Used by the train loop (validation every `eval_every` steps of a method that declares
`predict`), predict.py (`Recognizer`) and evaluate/benchmarks.py. A recognizer method declares
(docs/interfaces.md): `predict(params, model_state, images uint8 [B, H, W, 3], config) ->
(ids int32 [B, L], confidence [B])`, `eval_views(record, rng, config)` and
`charset_from_config(config)` (ids -> text).
"""

import functools

import jax
import numpy as np

from sslocr_jax.data import metrics
from sslocr_jax.data import pipeline
from sslocr_jax.train import sharding as sharding_lib


def make_batch_predictor(method, config, mesh, batch_size: int):
  """Returns `fn(params, model_state, images uint8 [n <= b, H, W, 3]) -> (ids [n, L], conf [n])`.

  Every call runs one fixed-size global batch (the last one zero-padded), so the jitted
  function compiles once. `batch_size` is global, rounded up to a multiple of the device count;
  each process passes its own `b = batch_size / process_count` images (possibly none) and gets
  its own rows back. With several processes every process must make every call (a collective).
  """
  return make_batch_runner(
    functools.partial(method.predict, config=config), config, mesh, batch_size
  )


def make_batch_runner(fn, config, mesh, batch_size: int, *, gather: bool = False, width=None):
  """`fn(params, model_state, images) -> arrays [B, ...]` jitted over fixed-size global batches
  of images uint8 [B, image_height, image_width, 3] (the last one zero-padded: one compile).

  gather=False (predictions): as `make_batch_predictor`, each process passes its own rows and
  gets them back. gather=True (the probe's features): every process passes the same images
  (n <= batch_size) and gets all n rows back (the output is replicated over the mesh).
  `width`: the images' width when it is not `config.image_width`.
  """
  n_dev = mesh.size
  batch_size = -(-int(batch_size) // n_dev) * n_dev
  local_size = batch_size // jax.process_count()
  out_sharding = sharding_lib.replicated(mesh) if gather else sharding_lib.batch_sharding(mesh)
  jitted = jax.jit(fn, out_shardings=out_sharding)

  def run_batch(params, model_state, images):
    images = np.asarray(images, np.uint8)
    if images.size == 0:  # a process with no images left (several processes)
      images = images.reshape((0,) + run_batch.image_shape)
    n = images.shape[0]
    size = batch_size if gather else local_size
    if n > size:
      raise ValueError(
        f"batch of {n} images > batch size {size}" + ("" if gather else " per process")
      )
    padded = np.zeros((size,) + images.shape[1:], np.uint8)
    padded[:n] = images
    if gather:  # this process's share of the global batch
      padded = padded[jax.process_index() * local_size :][:local_size]
    x = sharding_lib.global_batch({"image": padded}, mesh)["image"]
    out = jitted(params, model_state, x)
    if gather:  # replicated: every process holds all rows
      return jax.tree.map(lambda a: np.asarray(a.addressable_data(0))[:n], out)
    return jax.tree.map(lambda a: sharding_lib.local_rows(a, mesh)[:n], out)

  run_batch.batch_size = batch_size
  run_batch.image_shape = (config.image_height, int(width or config.image_width), 3)
  run_batch.jitted = jitted
  return run_batch


def eval_dataset(method, config, data_config, batch_size: int):
  """Un-augmented, unshuffled, single-pass batches {image, text, index} of `data_config`; with
  several processes, this process's shard (records p, p + n, ...)."""
  return pipeline.make_dataset(
    config,
    method.eval_views,
    data_config=data_config,
    batch_size=batch_size,
    shuffle=False,
    repeat=False,
    drop_remainder=False,
    num_workers=0,
  )


def evaluate_batches(predict_batch, params, model_state, batches, charset) -> metrics.Counts:
  """Greedy predictions on batches {image, text} -> summed word-accuracy / NED counts.

  With several processes each scores its own batches and the counts are summed over the
  processes: every process returns the counts of the whole set. The processes' shards may
  hold different numbers of batches (uneven sizes, dropped corrupt records), so a process
  with none left feeds empty batches until all are done (each prediction is a collective).
  """
  counts = metrics.Counts()
  multi = jax.process_count() > 1
  it = iter(batches)
  while True:
    batch = next(it, None)
    if multi:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

      if not np.any(multihost_utils.process_allgather(np.asarray(batch is not None))):
        break
    elif batch is None:
      break
    images = batch["image"] if batch is not None else np.zeros((0,) + predict_batch.image_shape)
    ids, _ = predict_batch(params, model_state, images)
    if batch is not None:
      preds = [charset.decode(row) for row in ids]
      counts += metrics.score(preds, [str(t) for t in batch["text"]])
  if multi:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top

    # int32 counts and a float32 NED sum (exact to ~1e-7 relative): enough for a percentage.
    ints = multihost_utils.process_allgather(np.asarray([counts.samples, counts.correct], np.int32))
    ned = multihost_utils.process_allgather(np.asarray(counts.one_minus_ned_sum, np.float32))
    counts = metrics.Counts(
      int(np.sum(ints[..., 0])),
      int(np.sum(ints[..., 1])),
      float(np.sum(np.asarray(ned, np.float64))),
    )
  return counts


def make_evaluator(method, config, mesh):
  """`fn(state) -> {"val_accuracy": %, "val_one_minus_ned": %}` on `config.val_data`.

  With several processes each evaluates its shard of the validation set and the counts are
  reduced, so every process gets the figures of the whole set (and saves `best/` together).
  """
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

"""grain input pipeline: source -> shuffle -> repeat -> process shard -> views -> batch.

    source (records, + "index") -> [fraction subset] -> MapDataset.shuffle(seed) -> repeat()
      -> random_map(method.make_views)   # host numpy/OpenCV, seeded by (seed, global position)
      -> [process_index::process_count]  # lazy: each process computes only its own elements
      -> to_iter_dataset (drops corrupt records) -> batch(local_batch) -> mp_prefetch(workers)

The views are drawn before the process slice, so their random draws (augmentation, masks) are
seeded by an element's position in the global stream: element k of two hosts gets two different
draws, and a resumed run (same position) the same draw.

Each process reads its own shard and yields process-local numpy batches; the train loop turns
them into global arrays with `sharding.global_batch`. The returned iterator is checkpointable
(`get_state` / `set_state`), so resuming restores the data order exactly.
"""

import functools
import os
import signal

import grain
import jax

from sslocr_jax.data import sources


def _with_index(index, record):
  """Adds the source record index (for error reports naming the record)."""
  return None if record is None else {**record, "index": index}


def _views(record, rng, *, make_views, config):
  if record is None:  # corrupt record, already warned about by the source
    return None
  return make_views(record, rng, config)


def worker_init(worker_index: int, worker_count: int) -> None:
  """Runs first in every grain worker process (`mp_prefetch(worker_init_fn=...)`).

  A shutdown signal sent to the whole process group (a spot preemption, `kill -TERM -PGID`,
  Ctrl-C) also reaches the workers; they ignore it, so the main process can still read the
  batches it needs until it has saved its checkpoint (it stops the workers itself, grain kills
  them). OpenCV's default thread pool of one thread per core in every worker oversubscribes a
  large host: one thread per worker, the workers are the parallelism.
  """
  del worker_index, worker_count
  signal.signal(signal.SIGTERM, signal.SIG_IGN)
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  import cv2  # pylint: disable=g-import-not-at-top

  cv2.setNumThreads(1)


def host_cores() -> int:
  """CPU cores this process may use (its affinity mask, e.g. a SLURM allocation)."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:  # not Linux
    return os.cpu_count() or 1


MAX_AUTO_WORKERS = 32


def resolve_num_workers(data_config) -> int:
  """`data.num_workers`, or when it is -1 (unset) one worker per host core but one, at most
  `MAX_AUTO_WORKERS`.

  One DiG worker renders and augments about 3,000 samples/s (docs/benchmarks.md), so 8 GPUs
  in one process (~10,000 DiG samples/s at ViT-Small bf16) need several; the core left over
  runs the main process (dispatch, checkpoints). 0 = no worker processes (tests, small CPUs).
  """
  workers = int(data_config.get("num_workers", 0))
  if workers < 0:
    workers = max(0, min(host_cores() - 1, MAX_AUTO_WORKERS))
  return workers


def local_batch_size(global_batch: int) -> int:
  if global_batch % jax.process_count():
    raise ValueError(
      f"config.batch_size={global_batch} is not divisible by {jax.process_count()} processes"
    )
  return global_batch // jax.process_count()


def make_dataset(
  config,
  make_views,
  *,
  data_config=None,
  batch_size=None,
  shuffle=True,
  repeat=True,
  drop_remainder=True,
  num_workers=None,
  seed_offset=0,
):
  """Returns a grain `IterDataset` of process-local batches `{name: np.ndarray [b, ...]}`.

  Args:
    config: the run config (`config.data` describes the source and workers).
    make_views: `fn(record, rng, config) -> dict of numpy` (a method's `make_views`).
    data_config: overrides `config.data` (e.g. a validation source).
    batch_size: global batch size (default `config.batch_size`).
  """
  data = data_config or config.data
  seed = int(data.get("seed", config.seed)) + seed_offset
  ds = grain.MapDataset.source(sources.make_source(data)).map_with_index(_with_index)
  fraction = float(data.get("fraction", 1.0))
  if fraction < 1.0:  # a deterministic labeled subset, the same for every seed of the run
    n = max(1, round(len(ds) * fraction))
    ds = ds.shuffle(seed=int(data.get("fraction_seed", 1234)))[:n]
  if shuffle:
    ds = ds.shuffle(seed=seed)
  if repeat:
    ds = ds.repeat(None)
  ds = ds.random_map(functools.partial(_views, make_views=make_views, config=config), seed=seed)
  ds = ds[jax.process_index() :: jax.process_count()]
  ds = ds.to_iter_dataset(
    grain.ReadOptions(
      num_threads=int(data.get("num_threads", 4)),
      prefetch_buffer_size=int(data.get("prefetch", 64)),
    )
  )
  ds = ds.batch(local_batch_size(batch_size or config.batch_size), drop_remainder=drop_remainder)
  workers = resolve_num_workers(data) if num_workers is None else num_workers
  if workers:
    ds = ds.mp_prefetch(
      grain.MultiprocessingOptions(num_workers=int(workers), per_worker_buffer_size=2),
      worker_init_fn=worker_init,
    )
  return ds


def num_records(data_config) -> int:
  """Records per pass over `data_config` (after the `fraction` subset), this process's share
  not taken."""
  n = len(sources.make_source(data_config))
  fraction = float(data_config.get("fraction", 1.0))
  return max(1, round(n * fraction)) if fraction < 1.0 else n


def batch_spec(config, make_views, data_config=None) -> dict:
  """`{name: ShapeDtypeStruct [global_batch, ...]}` of one batch, from the views of record 0."""
  import numpy as np  # pylint: disable=g-import-not-at-top

  source = sources.make_source(data_config or config.data)
  for i in range(min(len(source), 100)):
    record = source[i]
    views = (
      None
      if record is None
      else make_views({**record, "index": i}, np.random.default_rng(0), config)
    )
    if views is not None:  # None: a corrupt record, or a sample the method drops
      return {
        k: jax.ShapeDtypeStruct((config.batch_size,) + np.shape(v), np.asarray(v).dtype)
        for k, v in views.items()
      }
  raise ValueError("the first 100 records of the data source are all unreadable")

r"""Entry point: `python -m sslocr_jax.main --config=configs/<method>.py[:variant] [--workdir=DIR]`.

Dispatches on `config.task`: `pretrain` / `finetune` (the generic loop in train/loop.py) or
`evaluate` (evaluate/benchmarks.py). Any config field is overridable with
`--config.FIELD=VALUE`. `--workdir` is a local folder or a bucket URI (`gs://bucket/run`: every
workdir file goes through etils.epath, as orbax's checkpoints do); without it, a fresh folder
under `./runs/` is used.

Multi-host (`--config.distributed=True`, the same command on every host): the first thing the
program does is `jax.distributed.initialize()`. On TPU VMs (and SLURM / Open MPI clusters) it
finds the coordinator by itself; on other GPU clusters pass it with flags or environment:

    --coordinator_address=HOST0:1234 --num_processes=N --process_id=I
    (or JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES, JAX_PROCESS_ID; JAX_LOCAL_DEVICE_IDS)

Giving `--coordinator_address` (or JAX_COORDINATOR_ADDRESS) also turns the distributed mode on.

Every process prints its device counts at start. A launcher that knows how many accelerators
each process must drive says so with `--local_devices=N` (or SSLOCR_LOCAL_DEVICES=N;
launch/gpu.sh sets it): a process that sees another number stops with an error instead of
training on a fraction of the machine (e.g. JAX's SLURM detection restricting a
one-task-per-node process to GPU `SLURM_LOCALID` only).
"""

if __name__ == "__main__":
  # First, before the heavy imports: re-run once with a host allocator that keeps memory
  # between steps (XLA:CPU's per-step temporaries otherwise page-fault anew each step).
  from sslocr_jax import allocator  # pylint: disable=g-import-not-at-top

  allocator.ensure()

import datetime  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from sslocr_jax import config_utils
from sslocr_jax import errors


class _ListParser(flags.ArgumentParser):
  """Command-line value of a list field: "a,b" or a Python literal "['a', 'b']".

  ml_collections cannot override list fields (`data.lmdb_paths`, `data.font_dirs`) by itself;
  config files keep writing lists.
  """

  def parse(self, argument):
    if isinstance(argument, (list, tuple)):
      return list(argument)
    text = str(argument).strip()
    if text[:1] in "[(":
      import ast  # pylint: disable=g-import-not-at-top

      try:
        value = ast.literal_eval(text)
      except (ValueError, SyntaxError) as e:
        raise ValueError(f"cannot read {text!r} as a list: {e}") from None
      return list(value) if isinstance(value, (list, tuple)) else [value]
    return [part.strip() for part in text.split(",") if part.strip()]

  def flag_type(self):
    return "list"


config_flags.register_flag_parser_for_type(list, _ListParser())

_CONFIG = config_flags.DEFINE_config_file(
  "config", None, "Config file (path[:variant]).", lock_config=True
)
_WORKDIR = flags.DEFINE_string(
  "workdir", None, "Output folder, local or gs://bucket/run (default: runs/<method>-<time>)."
)
_COORDINATOR = flags.DEFINE_string(
  "coordinator_address",
  None,
  "Multi-host: HOST:PORT of process 0 (default: "
  "$JAX_COORDINATOR_ADDRESS, or auto-detected on TPU VMs / SLURM / Open MPI).",
)
_NUM_PROCESSES = flags.DEFINE_integer(
  "num_processes", None, "Multi-host: number of processes (default: $JAX_NUM_PROCESSES)."
)
_PROCESS_ID = flags.DEFINE_integer(
  "process_id", None, "Multi-host: this process's index (default: $JAX_PROCESS_ID)."
)
_LOCAL_DEVICES = flags.DEFINE_integer(
  "local_devices",
  None,
  "Devices each process must see; stop with an error otherwise "
  "(default: $SSLOCR_LOCAL_DEVICES; unset: no check).",
)


def check_overrides(argv, config) -> None:
  """Fails with the list of valid fields when `--config.X=...` names an unknown field."""
  for arg in argv:
    m = re.match(r"--config\.([\w.]+)", arg)
    if not m:
      continue
    node, path = config, m.group(1).split(".")
    for i, key in enumerate(path):
      if not hasattr(node, "keys") or key not in node:
        parent = ".".join(path[:i]) or "config"
        valid = sorted(node.keys()) if hasattr(node, "keys") else []
        raise errors.UserError(
          f"unknown config field '{'.'.join(path[: i + 1])}'. "
          f"Valid fields of {parent}: {', '.join(valid)}"
        )
      node = node[key]


def default_workdir(config) -> str:
  stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
  return os.path.join("runs", f"{config.method}-{stamp}")


def _env_int(name: str) -> int | None:
  value = os.environ.get(name, "")
  return int(value) if value.strip() else None


def initialize_distributed(
  coordinator_address: str | None = None,
  num_processes: int | None = None,
  process_id: int | None = None,
) -> None:
  """`jax.distributed.initialize` with the coordinator from arguments, else JAX_* environment.

  Arguments left None (and unset in the environment) are auto-detected by JAX: on a TPU VM a
  bare call works. Must run before anything touches the devices; calling it twice is a no-op.
  On CPU (tests, two local processes) cross-process collectives use gloo.
  """
  import jax  # pylint: disable=g-import-not-at-top

  if jax.distributed.is_initialized():
    return
  if jax.config.jax_cpu_collectives_implementation in (None, "", "none"):
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  kwargs = dict(
    coordinator_address=coordinator_address or os.environ.get("JAX_COORDINATOR_ADDRESS"),
    num_processes=num_processes if num_processes is not None else _env_int("JAX_NUM_PROCESSES"),
    process_id=process_id if process_id is not None else _env_int("JAX_PROCESS_ID"),
  )
  jax.distributed.initialize(**{k: v for k, v in kwargs.items() if v is not None})
  logging.info(
    "jax.distributed: process %d of %d, %d local / %d global devices",
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
  )


def check_local_devices(expected: int | None) -> str:
  """Returns this process's device line; SystemExit when it sees not `expected` local devices."""
  import jax  # pylint: disable=g-import-not-at-top

  local = jax.local_devices()
  line = (
    f"process {jax.process_index()} of {jax.process_count()}: {len(local)} local / "
    f"{jax.device_count()} devices ({local[0].platform}: {local[0].device_kind})"
  )
  if expected is not None and len(local) != expected:
    raise SystemExit(
      f"error: {line}, but the launcher asked for {expected} per process. Under SLURM with "
      "one task per node, JAX restricts each process to GPU $SLURM_LOCALID: pass every local "
      f"GPU (JAX_LOCAL_DEVICE_IDS=0,...,{expected - 1}, as launch/gpu.sh does) or launch one "
      "task per GPU; check CUDA_VISIBLE_DEVICES."
    )
  return line


def run(config, workdir: str):
  if config.task in ("pretrain", "finetune"):
    from sslocr_jax.train import loop  # pylint: disable=g-import-not-at-top

    return loop.train(config, workdir)
  if config.task == "evaluate":
    from sslocr_jax.evaluate import benchmarks  # pylint: disable=g-import-not-at-top

    return benchmarks.run(config, workdir)
  raise errors.UserError(
    f"config.task={config.task!r} is unknown; valid: pretrain, finetune, evaluate"
  )


def main(argv):
  del argv
  with errors.exit_on_user_error(errors.VERBOSE.value):
    _main(_CONFIG.value)


def _main(config):
  distributed = bool(
    config.get("distributed", False)
    or _COORDINATOR.value
    or os.environ.get("JAX_COORDINATOR_ADDRESS")
  )
  if distributed:
    if not _WORKDIR.value:  # hosts would each pick their own timestamped folder
      raise errors.UserError(
        "a multi-host run needs --workdir, a folder every host sees "
        "(gs://bucket/run, a shared file system or a gcsfuse mount)"
      )
    initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  expected = (
    _LOCAL_DEVICES.value if _LOCAL_DEVICES.value is not None else _env_int("SSLOCR_LOCAL_DEVICES")
  )
  print(check_local_devices(expected), flush=True)
  workdir = _WORKDIR.value or default_workdir(config)
  if not _WORKDIR.value:
    print(f"workdir: {workdir}", flush=True)
  run(config, workdir)


def _entry():
  # Validate `--config.FIELD` overrides against the loaded config before absl parses them, so
  # a typo gets the list of valid fields rather than absl's generic "unknown flag".
  argv = sys.argv
  with errors.exit_on_user_error("--verbose" in argv):
    _check_config_args(argv)
  logging.set_verbosity(logging.WARNING)
  app.run(main)


def _check_config_args(argv) -> None:
  """Loads the `--config` file (with its variant) and checks the `--config.X` overrides."""
  for i, arg in enumerate(argv):
    if arg.startswith("--config=") or (arg == "--config" and i + 1 < len(argv)):
      spec = arg.split("=", 1)[1] if "=" in arg else argv[i + 1]
      path = spec.partition(":")[0]
      if not os.path.isfile(path):
        raise errors.MissingPath(f"config file {path!r} does not exist (--config=FILE[:VARIANT])")
      check_overrides(argv, config_utils.load_config(spec))


if __name__ == "__main__":
  _entry()

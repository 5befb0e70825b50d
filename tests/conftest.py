"""Test setup: 8 fake CPU devices, cheap XLA backend optimisation, a session-wide compilation
cache, parsed absl flags.

Everything here is set through the environment before jax is imported, so CLI subprocesses
started by tests inherit it. The persistent compilation cache matters on a small CPU: every
`loop.train` builds new jitted functions, and a resumed or repeated run compiles exactly the
programs of an earlier one (cached executables are the same programs: bitwise checks hold).
Compilation dominates the suite on a 2-core CPU (docs/testing.md), so
`jax_disable_most_optimizations` is on: it only lowers the LLVM backend's effort (the HLO passes,
collectives and shardings are unchanged); the tests' tiny models compile ~20% faster.
"""

import atexit
import os
import shutil
import tempfile

import pytest

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "true")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _cache = tempfile.mkdtemp(prefix="sslocr_jax_test_cache_")
  atexit.register(shutil.rmtree, _cache, ignore_errors=True)
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "-1"

from absl import flags  # noqa: E402

flags.FLAGS.mark_as_parsed()


# The smoke run of each method (tests/test_method_contract.py runs and resumes it); other tests
# that need a trained smoke state of that method take it from here instead of training again.
# Recognition is the frozen-encoder decoder evaluation of the DiG run (`init_from`).
SMOKE_RUNS = {
  "dig": ("dig", "smoke"),
  "seqclr": ("seqclr", "smoke"),
  "siman": ("siman", "smoke"),
  "recognition": ("finetune", "smoke"),
}


def smoke_config(method: str, workdirs: dict):
  from tests.helpers import load_config  # pylint: disable=g-import-not-at-top

  config = load_config(*SMOKE_RUNS[method])
  if method == "recognition":
    config.init_from, config.freeze_encoder = workdirs["dig"], True
  return config


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory):
  """smoke_run(method) -> workdir of its smoke config trained straight through, once a session."""
  from etils import epath  # pylint: disable=g-import-not-at-top
  from sslocr_jax.train import loop  # pylint: disable=g-import-not-at-top

  workdirs = {}

  def run(method: str) -> str:
    if method not in workdirs:
      if method == "recognition":
        run("dig")
      config = smoke_config(method, workdirs)
      workdir = str(tmp_path_factory.mktemp(f"{method}_straight"))
      loop.train(config, epath.Path(workdir))  # an epath.Path workdir, as a CLI may pass
      workdirs[method] = workdir
    return workdirs[method]

  run.config = lambda method: smoke_config(method, workdirs)
  return run

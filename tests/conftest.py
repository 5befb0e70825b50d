"""Test setup: 8 fake CPU devices, a session-wide compilation cache, parsed absl flags.

Everything here is set through the environment before jax is imported, so CLI subprocesses
started by tests inherit it. The persistent compilation cache matters on a small CPU: every
`loop.train` builds new jitted functions, and a resumed or repeated run compiles exactly the
programs of an earlier one (cached executables are the same programs: bitwise checks hold).
"""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _cache = tempfile.mkdtemp(prefix="sslocr_jax_test_cache_")
  atexit.register(shutil.rmtree, _cache, ignore_errors=True)
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
  os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
  os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "-1"

from absl import flags  # noqa: E402

flags.FLAGS.mark_as_parsed()

"""The host-allocator re-run (sslocr_jax/allocator.py): which environment, and that it happens
once."""

import os
import subprocess
import sys

import pytest

from sslocr_jax import allocator


def test_environment_choices(monkeypatch):
  monkeypatch.setattr(allocator, "find_tcmalloc", lambda: "/lib/libtcmalloc_minimal.so.4")
  env = allocator.environment("auto", {"LD_PRELOAD": "/x.so"})
  assert env["LD_PRELOAD"] == "/lib/libtcmalloc_minimal.so.4 /x.so"
  assert env[allocator._DONE] == "1"
  glibc = allocator.environment("glibc", {"GLIBC_TUNABLES": "glibc.a=1"})
  assert glibc["GLIBC_TUNABLES"] == f"glibc.a=1:{allocator.GLIBC_KEEP}"
  assert "LD_PRELOAD" not in glibc
  # Nothing to do: turned off, already re-run, or an allocator already preloaded.
  assert allocator.environment("system", {}) is None
  assert allocator.environment("auto", {allocator._DONE: "1"}) is None
  assert allocator.environment("auto", {"LD_PRELOAD": "/usr/lib/libjemalloc.so.2"}) is None
  monkeypatch.setattr(allocator, "find_tcmalloc", lambda: None)
  assert allocator.environment("auto", {})["GLIBC_TUNABLES"] == allocator.GLIBC_KEEP
  with pytest.raises(ValueError, match="no libtcmalloc"):
    allocator.environment("tcmalloc", {})
  with pytest.raises(ValueError, match="SSLOCR_ALLOCATOR='fast'"):
    allocator.environment("fast", {})


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux only")
def test_ensure_reruns_the_command_once_with_the_arguments():
  code = (
    "import os, sys; from sslocr_jax import allocator; print('run', sys.argv[1:]); "
    "allocator.ensure(); print('env', os.environ.get('GLIBC_TUNABLES'))"
  )
  env = dict(os.environ, SSLOCR_ALLOCATOR="glibc")
  env.pop(allocator._DONE, None)
  out = subprocess.run(
    [sys.executable, "-c", code, "a", "--b=1"], env=env, capture_output=True, text=True, check=True
  ).stdout.splitlines()
  assert out == ["run ['a', '--b=1']", "run ['a', '--b=1']", f"env {allocator.GLIBC_KEEP}"]

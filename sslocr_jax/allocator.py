r"""A host allocator that keeps its memory between train steps: re-run the command once with it.

Why: XLA:CPU allocates an executable's temporary buffers (gigabytes for a DiG step) at every
call. glibc's malloc serves blocks above 32 MB with fresh `mmap`s and unmaps them on `free`, so
every step page-faults all its temporary memory anew: the ViT-Tiny DiG step at batch 32 took
1.6 million page faults and 6 s of system time per 9.3 s step on the 2-core development CPU.
With tcmalloc (which keeps freed pages) the same step takes 6.05 s; with glibc told to keep its
memory (one arena, no mmap, no trimming) 6.9 s (docs/benchmarks.md, issue 17). Accelerators
are unaffected (their buffers live on the device), so this only matters for CPU runs.

`ensure()` runs at the start of a command-line program, before anything heavy is imported: on
Linux, unless already done, it re-executes the same command line (`sys.orig_argv`) once with

  LD_PRELOAD=<libtcmalloc_minimal.so.4>   when one is installed (Debian/Ubuntu:
                                          `apt-get install libtcmalloc-minimal4`), else
  GLIBC_TUNABLES=glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=...

`SSLOCR_ALLOCATOR=system` turns it off (and `tcmalloc` / `glibc` pick one); memory taken by
the process is then kept until it exits (its peak resident size stays), which is what a
training process wants.
"""

import glob
import os
import sys

ENV = "SSLOCR_ALLOCATOR"
_DONE = "SSLOCR_ALLOCATOR_SET"
_TCMALLOC_GLOBS = (
  "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",
  "/usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so.4",
  "/usr/lib64/libtcmalloc_minimal.so.4",
  "/usr/lib/libtcmalloc_minimal.so.4",
  "/usr/lib/*/libtcmalloc.so.4",
)
GLIBC_KEEP = (
  "glibc.malloc.arena_max=1:glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=68719476736"
)


def find_tcmalloc() -> str | None:
  """Path of an installed tcmalloc shared library, or None."""
  for pattern in _TCMALLOC_GLOBS:
    hits = sorted(glob.glob(pattern))
    if hits:
      return hits[0]
  return None


def environment(choice: str, env: dict) -> dict | None:
  """The environment to re-run with for `choice` (auto | tcmalloc | glibc | system), or None
  when nothing is to change (off, not Linux, already done, an allocator already preloaded)."""
  if choice not in ("auto", "tcmalloc", "glibc", "system"):
    raise ValueError(f"{ENV}={choice!r} is unknown; valid: auto, tcmalloc, glibc, system")
  preload = env.get("LD_PRELOAD", "")
  if choice == "system" or env.get(_DONE) or not sys.platform.startswith("linux"):
    return None
  if any(name in preload for name in ("tcmalloc", "jemalloc", "mimalloc")):
    return None
  new = dict(env, **{_DONE: "1"})
  tcmalloc = find_tcmalloc() if choice in ("auto", "tcmalloc") else None
  if tcmalloc:
    new["LD_PRELOAD"] = f"{tcmalloc} {preload}".strip()
  elif choice == "tcmalloc":
    raise ValueError(f"{ENV}=tcmalloc but no libtcmalloc is installed")
  else:
    tunables = env.get("GLIBC_TUNABLES", "")
    new["GLIBC_TUNABLES"] = f"{tunables}:{GLIBC_KEEP}" if tunables else GLIBC_KEEP
  return new


def ensure() -> None:
  """Re-executes this command line once with the allocator of `environment` (see module doc)."""
  new = environment(os.environ.get(ENV, "auto"), dict(os.environ))
  argv = getattr(sys, "orig_argv", None)
  if new is None or not argv:
    return
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable, *argv[1:]], new)

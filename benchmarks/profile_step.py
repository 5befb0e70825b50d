r"""Where a train step's time goes: per-op times from a jax.profiler trace, grouped by layer.

    python benchmarks/profile_step.py --config=configs/dig.py:size=tiny --batch=32 [--steps=2]

Traces `--steps` train steps (after one warm-up step), reads the trace back with
`jax.profiler.ProfileData` and sums each compiled op's time (XLA:CPU thunks, GPU kernels).
Each op is put in a group from the jax source path XLA keeps in its metadata (`op_name`, e.g.
`jit(train_step)/transpose(jvp(Encoder))/blocks_3/attn/bqhd,bkhd->bhqk/dot_general`): the
encoder's qkv / attention / proj / fc1 / GELU / fc2 / LayerNorm, copies and transposes, the
heads, the optimizer and EMA updates. `transpose(...)` in the path marks the backward pass.
Prints the groups (ms per step, share, forward / backward), then the top ops.
"""

import collections
import glob
import os
import re
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if __name__ == "__main__":  # re-run once with a host allocator that keeps memory (allocator.py)
  from sslocr_jax import allocator  # noqa: E402  # pylint: disable=g-import-not-at-top

  allocator.ensure()

import jax  # noqa: E402

from benchmarks import common  # noqa: E402
from sslocr_jax import config_utils  # noqa: E402

# (group, regex on "<op_name> <opcode>"); the first match wins.
GROUPS = [
  ("attn: fused kernel (cuDNN), fwd+bwd", r" fmha$"),
  ("copy/transpose", r" (copy|transpose)$"),
  (
    "attn: q.k, p.v matmuls",
    r"/attn/[^ ]*->[^ ]*/dot_general .*dot$|"
    r"/attn/[^ ]*dot_product_attention[^ ]* .*dot$",
  ),
  ("attn: qkv matmul", r"/attn/qkv/.* .*dot$"),
  ("attn: out proj matmul", r"/attn/proj/.* .*dot$"),
  ("attn: softmax, scale, bias", r"/attn/"),
  ("mlp: fc1, fc2 matmuls", r"/mlp/fc[12]/.* .*dot$"),
  ("mlp: GELU, biases", r"/mlp/"),
  ("LayerNorm", r"/norm[12]/"),
  ("patch embed, mask, pos", r"Encoder\)?/(patch_embed|[^/]*(mul|add|sub|select))"),
  ("encoder: residual adds, other", r"Encoder"),
  (
    "heads (MIM, projectors, predictor) + losses",
    r"MimHead|MLP|BatchNorm|/(log_softmax|"
    r"norm|einsum|mean|square)",
  ),
  ("optimizer + EMA update", r"adam|optax|scale_by|mul|add|sub|sqrt|div|pow|select"),
]


def _kind(name: str, opcode: str, target: str = "") -> str:
  """dot | fmha | copy | transpose | fusion | ... from the HLO instruction (fusion name hints,
  a custom call's target: cuBLAS GEMMs and cuDNN convolutions are dots, cuDNN fmha the fused
  attention)."""
  if "fmha" in target:
    return "fmha"
  if "cublas" in target or "cudnn$conv" in target:
    return "dot"
  if opcode in ("dot", "convolution") or name.startswith(
    ("ynn_fusion", "xnn_fusion", "onednn", "cublas", "gemm")
  ):
    return "dot"
  if opcode in ("copy", "transpose") or name.startswith(("copy", "transpose")):
    return "copy" if "copy" in name or opcode == "copy" else "transpose"
  return opcode


def hlo_ops(hlo_text: str) -> dict[str, tuple[str, str]]:
  """{instruction name: (op_name metadata, kind)} from an optimized HLO module's text.

  The shape is one token (`bf16[8,64]{1,0}`) or a tuple (`(bf16[...]{...}, u8[...]{0})`: GPU
  custom calls and multi-output fusions)."""
  ops = {}
  pattern = re.compile(r"^\s*(?:ROOT )?%?([\w.\-]+) = (?:\(.*?\)|\S+) ([\w\-]+)\(")
  for line in hlo_text.splitlines():
    m = pattern.match(line)
    if not m:
      continue
    name, opcode = m.group(1), m.group(2)
    meta = re.search(r'metadata=\{op_name="([^"]*)"', line)
    target = re.search(r'custom_call_target="([^"]*)"', line)
    kind = _kind(name, opcode, target.group(1) if target else "")
    ops[name] = (meta.group(1) if meta else "", kind)
  return ops


def group_of(op_name: str, kind: str) -> str:
  key = f"{op_name} {kind}"
  for group, pattern in GROUPS:
    if re.search(pattern, key):
      return group
  return "other"


def trace_op_times(fn, steps: int) -> dict[str, float]:
  """Runs `fn()` (blocking) `steps` times under the profiler -> {hlo op: seconds per call}."""
  logdir = tempfile.mkdtemp(prefix="profile_step_")
  with jax.profiler.trace(logdir):
    for _ in range(steps):
      fn()
  path = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)[0]
  data = jax.profiler.ProfileData.from_file(path)
  total = collections.Counter()
  for plane in data.planes:
    for line in plane.lines:
      for event in line.events:
        stats = dict(event.stats)
        if "hlo_op" in stats:
          total[stats["hlo_op"]] += event.duration_ns / 1e9 / steps
  return dict(total)


def breakdown(op_seconds: dict[str, float], ops: dict[str, tuple[str, str]]) -> list[dict]:
  """Rows {group, ms, share, fwd_ms, bwd_ms}, largest first, plus a total row."""
  rows = collections.defaultdict(lambda: [0.0, 0.0])
  for name, sec in op_seconds.items():
    op_name, kind = ops.get(name, ("", ""))
    backward = "transpose(" in op_name
    rows[group_of(op_name, kind)][int(backward)] += sec
  total = sum(op_seconds.values()) or 1.0
  out = [
    {
      "group": g,
      "ms": 1e3 * (f + b),
      "share": (f + b) / total,
      "fwd_ms": 1e3 * f,
      "bwd_ms": 1e3 * b,
    }
    for g, (f, b) in rows.items()
  ]
  out.sort(key=lambda r: -r["ms"])
  out.append(
    {
      "group": "total (sum of op times)",
      "ms": 1e3 * total,
      "share": 1.0,
      "fwd_ms": sum(r["fwd_ms"] for r in out),
      "bwd_ms": sum(r["bwd_ms"] for r in out),
    }
  )
  return out


def main():
  from absl import flags  # pylint: disable=g-import-not-at-top
  from sslocr_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  from sslocr_jax.train import loop  # pylint: disable=g-import-not-at-top
  from sslocr_jax.train import sharding  # pylint: disable=g-import-not-at-top

  flags.DEFINE_string("config", "configs/dig.py:size=tiny", "config[:variant]")
  flags.DEFINE_integer("batch", 32, "global batch size")
  flags.DEFINE_integer("steps", 2, "traced steps")
  flags.DEFINE_integer("top", 15, "how many single ops to list")
  flags.DEFINE_string("dtype", None, "compute dtype override")
  f = flags.FLAGS
  f(sys.argv)
  config = config_utils.load_config(f.config)
  config.batch_size, config.data.num_workers = f.batch, 0
  if f.dtype:
    config.dtype = f.dtype
  s = loop.setup(config)
  spec = pipeline.batch_spec(config, s.method.make_views)
  batch = sharding.global_batch(common.random_batch(spec), s.mesh)
  ops = hlo_ops(s.train_step.lower(s.state, batch).compile().as_text())
  holder = {"state": s.state}

  def one_step():
    holder["state"], m = s.train_step(holder["state"], batch)
    jax.block_until_ready(m)

  one_step()
  seconds = trace_op_times(one_step, f.steps)
  rows = breakdown(seconds, ops)
  print(f"{f.config}, batch {f.batch}, {jax.device_count()} x {jax.devices()[0].device_kind}:")
  common.print_table(
    rows, {"config": f.config, "batch": f.batch, "step_ms_sum_of_ops": rows[-1]["ms"]}
  )
  print(f"top {f.top} ops:")
  for name, sec in sorted(seconds.items(), key=lambda kv: -kv[1])[: f.top]:
    op_name, kind = ops.get(name, ("", ""))
    print(f"  {1e3 * sec:8.2f} ms  {name:32s} {kind:10s} {op_name[-90:]}")


if __name__ == "__main__":
  main()

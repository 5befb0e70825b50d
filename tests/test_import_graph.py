"""The package's imports point one way (docs/interfaces.md "Layers"), function-level imports
included, and form no cycle. Reads the sources with `ast`: nothing is imported."""

import ast
import os

import sslocr_jax

ROOT = os.path.dirname(sslocr_jax.__file__)
# data 0 (and base utilities sslocr_jax/*.py), models 1, methods 2, train 3,
# evaluate / export / predict 4, study / demo 5, main 6.
LAYERS = {
  "data": 0,
  "models": 1,
  "methods": 2,
  "train": 3,
  "evaluate": 4,
  "export": 4,
  "predict": 4,
  "study": 5,
  "demo": 5,
  "main": 6,
}


def _modules() -> dict:
  """{dotted module name: file}."""
  out = {}
  for d, _, files in os.walk(ROOT):
    for f in files:
      if f.endswith(".py"):
        path = os.path.join(d, f)
        name = "sslocr_jax." + os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
        out[name.removesuffix(".__init__")] = path
  return out


def _imports(mods: dict, name: str) -> set:
  """The package modules `name` imports anywhere in its file (absolute or relative)."""
  path = mods[name]
  out = set()
  for node in ast.walk(ast.parse(open(path).read())):
    if isinstance(node, ast.Import):
      out |= {a.name for a in node.names}
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        parts = name.split(".") if path.endswith("__init__.py") else name.split(".")[:-1]
        parts = parts[: len(parts) - node.level + 1]
        base = ".".join(parts + ([base] if base else []))
      out |= {base} | {f"{base}.{a.name}" for a in node.names}
  return {m for m in out if m in mods and m != name}


def _layer(name: str) -> int:
  parts = name.split(".")
  return 0 if len(parts) == 1 else LAYERS.get(parts[1], 0)


def _violations(graph: dict) -> list:
  bad = []
  for m, deps in graph.items():
    for d in deps:
      lm, ld = _layer(m), _layer(d)
      if (lm <= 2 and ld > lm) or (lm == 3 and ld != 3 and ld >= 2):
        bad.append(f"{m} -> {d}")
  return sorted(bad)


def _cycles(graph: dict) -> list:
  """Strongly connected components with more than one module (Tarjan)."""
  index, low, stack, on, out = {}, {}, [], set(), []

  def visit(v):
    index[v] = low[v] = len(index)
    stack.append(v)
    on.add(v)
    for w in graph[v]:
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      comp = []
      while True:
        w = stack.pop()
        on.discard(w)
        comp.append(w)
        if w == v:
          break
      if len(comp) > 1:
        out.append(sorted(comp))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return out


def test_checker_sees_lazy_imports_and_cycles(tmp_path):
  lazy = tmp_path / "a.py"
  lazy.write_text("def f():\n  from sslocr_jax.train import b  # lazy\n  from . import c\n")
  mods = {"sslocr_jax.methods.a": str(lazy), "sslocr_jax.train.b": "", "sslocr_jax.methods.c": ""}
  assert _imports(mods, "sslocr_jax.methods.a") == {"sslocr_jax.train.b", "sslocr_jax.methods.c"}
  graph = {
    "sslocr_jax.methods.a": {"sslocr_jax.train.b"},
    "sslocr_jax.train.b": set(),
    "sslocr_jax.models.c": {"sslocr_jax.models.d"},
    "sslocr_jax.models.d": {"sslocr_jax.models.c"},
  }
  assert _violations(graph) == ["sslocr_jax.methods.a -> sslocr_jax.train.b"]
  assert _cycles(graph) == [["sslocr_jax.models.c", "sslocr_jax.models.d"]]
  assert _layer("sslocr_jax.paths") == 0 and _layer("sslocr_jax.predict") == 4


def test_imports_point_one_way_without_cycles():
  mods = _modules()
  assert "sslocr_jax.train.loop" in mods and "sslocr_jax.paths" in mods
  graph = {m: _imports(mods, m) for m in mods}
  assert "sslocr_jax.train.resolve" in graph["sslocr_jax.predict"]
  assert _violations(graph) == []
  assert _cycles(graph) == []

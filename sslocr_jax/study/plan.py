"""The study's plan: the study config checked and expanded into runs (commands, deps)."""

import os
import re
import shlex


from sslocr_jax import config_utils

# The repository root: runs execute `python -m sslocr_jax.main` there, configs/ is found
# there and the report defaults to its docs/results.md.
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DONE = "study_done.json"


def _parse_like(old, text: str):
  """`text` as the type of the field's current value (as config_flags does)."""
  if isinstance(old, bool):
    return text.lower() in ("1", "true", "yes")
  if isinstance(old, (int, float)) and not isinstance(old, bool):
    return type(old)(float(text)) if isinstance(old, int) and "." in text else type(old)(text)
  if isinstance(old, (list, tuple)):
    import ast  # pylint: disable=g-import-not-at-top

    return type(old)(ast.literal_eval(text))
  return text


def resolve(spec: str, overrides) -> dict:
  """The config of `spec` with "field=value" overrides applied, as a plain dict."""
  c = config_utils.load_config(spec)
  c.unlock()
  for item in overrides:
    key, _, text = item.partition("=")
    *parents, leaf = key.split(".")
    node = c
    for p in parents:
      node = node[p]
    if leaf not in node:
      raise ValueError(f"{spec}: override {item!r} names no field")
    node[leaf] = _parse_like(node[leaf], text)
  return c.to_dict()


def encoder_signature(config: dict, kind: str) -> dict:
  """The fields that decide the encoder's parameter shapes (and the ViT's input size)."""
  model = config["model"]
  if model["name"] != kind:
    return {"name": model["name"]}
  sig = {
    k: (list(model[k]) if isinstance(model[k], (list, tuple)) else model[k])
    for k in config_utils.ENCODER_KEYS[kind]
  }
  if kind == "vit":
    sig.update(image_height=config["image_height"], image_width=config["image_width"])
  return sig


def val_seeds(study) -> list[int]:
  """The validation renderer seeds of the fine-tuning configs (synthetic val_data)."""
  return sorted(
    {
      int(resolve(ft["config"], ft["overrides"])["val_data"]["seed"])
      for ft in study.finetune.values()
    }
  )


def check_study(study) -> list[str]:
  """Problems that would make the study wrong: an arm whose pretraining encoder differs from
  the one its fine-tuning builds, a test set rendered with a validation seed."""
  problems = []
  names = [a["name"] for a in study.arms]
  protocols = [p["name"] for p in study.protocols]
  if len(set(names)) < len(names):
    problems.append(f"arm names repeat: {names}")
  for arm in study.arms:
    if arm["encoder"] not in study.finetune:
      problems.append(
        f"arm {arm['name']}: encoder {arm['encoder']!r} has no fine-tuning "
        f"recipe; valid: {sorted(study.finetune)}"
      )
    unknown = set(arm.get("protocols") or ()) - set(protocols)
    if unknown:
      problems.append(f"arm {arm['name']}: unknown protocols {sorted(unknown)}")
  for kind, ft in study.finetune.items():
    for p in study.protocols:  # an unknown field fails here, before any run
      resolve(ft["config"], list(ft["overrides"]) + list(p["overrides"]))
  if problems:
    return problems
  if int(study.test.seed) in val_seeds(study):
    problems.append(
      f"test.seed={study.test.seed} is a validation seed: the test set would "
      "repeat the validation lines"
    )
  for arm in study.arms:
    if not arm["config"]:
      continue
    ft = study.finetune[arm["encoder"]]
    want = encoder_signature(resolve(ft["config"], ft["overrides"]), arm["encoder"])
    got = encoder_signature(resolve(arm["config"], arm["overrides"]), arm["encoder"])
    diff = {k: (got.get(k), want.get(k)) for k in set(got) | set(want) if got.get(k) != want.get(k)}
    if diff:
      problems.append(
        f"arm {arm['name']}: pretraining vs fine-tuning encoder differ "
        f"(field: pretrain, finetune): {diff}"
      )
  return problems


def fraction_tag(f: float) -> str:
  return f"{f:g}"


def _main_cmd(config: str, workdir: str, overrides) -> list[str]:
  return ["-m", "sslocr_jax.main", f"--config={config}", f"--workdir={workdir}"] + [
    f"--config.{o}" for o in overrides
  ]


def make_plan(study, study_dir: str) -> list[dict]:
  """Every run in execution order: pretrainings, then each fine-tuning and its evaluations.

  A run: name, kind (pretrain | finetune | evaluate), workdir (relative to study_dir), args
  (after `python`, with study_dir-relative paths written as {study}/...), deps, meta.
  """
  runs = []
  pre_seeds = list(study.pretrain_seeds)
  for arm in study.arms:
    if not arm["config"]:
      continue
    for s in pre_seeds:
      name = f"pretrain/{arm['name']}-s{s}"
      runs.append(
        dict(
          name=name,
          kind="pretrain",
          workdir=name,
          deps=[],
          args=_main_cmd(arm["config"], "{study}/" + name, [f"seed={s}"] + list(arm["overrides"])),
          meta=dict(arm=arm["name"], seed=s, encoder=arm["encoder"]),
        )
      )
  eval_sets = [("test", "{study}/data/" + study.test.name)]
  for root in study.lmdb_roots:
    name = base = os.path.basename(os.path.normpath(root)) or "lmdb"
    while name in [n for n, _ in eval_sets]:  # two roots named alike: lmdb, lmdb_2, ...
      name = f"{base}_{len(eval_sets) + 1}"
    eval_sets.append((name, os.path.abspath(root)))
  protocols = {p["name"]: p for p in study.protocols}
  for arm in study.arms:
    ft = study.finetune[arm["encoder"]]
    for proto in arm.get("protocols") or list(protocols):
      for f in study.fractions:
        for s in study.seeds:
          runs += _finetune_runs(arm, ft, protocols[proto], f, s, pre_seeds, eval_sets, study)
  return runs


def _finetune_runs(arm, ft, proto, f, s, pre_seeds, eval_sets, study) -> list[dict]:
  """One fine-tuning run and one evaluation per test set."""
  name = f"finetune/{arm['name']}-f{fraction_tag(f)}-{proto['name']}-s{s}"
  overrides = [f"seed={s}", f"data.fraction={f}"]
  deps = []
  if arm["config"]:
    pre = f"pretrain/{arm['name']}-s{s if s in pre_seeds else pre_seeds[0]}"
    overrides.append("init_from={study}/" + pre)
    deps.append(pre)
  overrides += list(ft["overrides"]) + list(proto["overrides"])
  meta = dict(
    arm=arm["name"],
    fraction=f,
    protocol=proto["name"],
    seed=s,
    encoder=arm["encoder"],
    pretrain=deps[0] if deps else "",
  )
  runs = [
    dict(
      name=name,
      kind="finetune",
      workdir=name,
      deps=deps,
      meta=meta,
      args=_main_cmd(ft["config"], "{study}/" + name, overrides),
    )
  ]
  for set_name, root in eval_sets:
    ev = f"eval/{name[len('finetune/') :]}/{set_name}"
    ev_overrides = [f"checkpoint={{study}}/{name}", f"data.lmdb_root={root}"]
    runs.append(
      dict(
        name=ev,
        kind="evaluate",
        workdir=ev,
        deps=[name],
        meta=dict(meta, set=set_name, finetune=name),
        args=_main_cmd(
          study.evaluate["config"],
          "{study}/" + ev,
          ev_overrides + list(study.evaluate["overrides"]),
        ),
      )
    )
  return runs


def select(runs: list[dict], only: str, finished) -> list[dict]:
  """The runs matching `only`, plus the unfinished runs they depend on (in plan order)."""
  if not only:
    return runs
  by_name = {r["name"]: r for r in runs}
  keep = {r["name"] for r in runs if re.search(only, r["name"])}
  todo = list(keep)
  while todo:
    for dep in by_name[todo.pop()]["deps"]:
      if dep not in keep and not finished(by_name[dep]):
        keep.add(dep)
        todo.append(dep)
  return [r for r in runs if r["name"] in keep]


def expand(args: list[str], study_dir: str) -> list[str]:
  return [a.replace("{study}", study_dir) for a in args]


def shown(run: dict, study_dir: str) -> str:
  """The command as a person would type it (from the repository root)."""
  return "python " + shlex.join(expand(run["args"], study_dir))


def train_samples(run: dict) -> int:
  """total_steps x batch_size of a training run's resolved config (0 for an evaluation)."""
  if run["kind"] == "evaluate":
    return 0
  spec = run["args"][2].split("=", 1)[1]
  c = resolve(spec, [a[len("--config.") :] for a in run["args"][4:]])
  return int(c["total_steps"]) * int(c["batch_size"])

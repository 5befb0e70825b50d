"""The study's plan: the study config checked and expanded into cells and runs, each cell's
config hash, and the `--dry_run` cost estimate.

A cell is one (arm, protocol, labeled fraction, fine-tuning seed): a fine-tuning and its
evaluation on each test set, after its arm's pretraining (seed 0) when the arm has one. Its
name is `<arm>-<protocol>-f<fraction>-s<seed>`; it belongs to the one part that lists its
(arm, protocol, fraction).
"""

import copy
import fnmatch
import functools
import hashlib
import json
import os
import shlex

from sslocr_jax import config_utils

# The repository root: runs execute `python -m sslocr_jax.main` there, configs/ is found
# there and the report defaults to its docs/results.md.
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DONE = "study_done.json"
PRETRAIN_SEED = 0
STUDY = "{study}"  # the study folder in run arguments, expanded when a run starts
# A recipe field of configs/study.py (`recipes`) -> the fine-tuning config field it sets.
RECIPE_FIELDS = {
  "encoder_lr_mult": "optim.lr_mult.encoder",
  "layer_decay": "optim.layer_decay",
  "warmup_steps": "optim.warmup_steps",
  "base_lr": "optim.base_lr",
  "grad_clip": "optim.grad_clip",
}
# Config fields left out of a cell's hash: they only log (the representation probe reads
# frozen features and never changes the pretraining state or its data order), so adding or
# retuning them must not rerun committed cells.
HASH_IGNORE = ("probe_*",)


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


@functools.lru_cache(maxsize=None)
def _base(spec: str):
  """The config of `spec` (loaded once: a study resolves hundreds of runs)."""
  return config_utils.load_config(spec)


def _has_field(config, key: str) -> bool:
  node = config
  for p in key.split("."):
    if p not in node:
      return False
    node = node[p]
  return True


def resolve(spec: str, overrides) -> dict:
  """The config of `spec` with "field=value" overrides applied, as a plain dict."""
  c = copy.deepcopy(_base(spec))
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


def pretrain_overrides(study, arm: dict) -> tuple[list[str], list[str]]:
  """(overrides applied, overrides dropped): an override of a field in
  `study.pretrain_optional` (e.g. probe_every) is dropped where the config has no such field."""
  optional = set(study.get("pretrain_optional", ()))
  base = _base(arm["config"])
  kept, dropped = [], []
  for o in arm["overrides"]:
    key = o.partition("=")[0]
    (dropped if key in optional and not _has_field(base, key) else kept).append(o)
  return kept, dropped


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


def fraction_tag(f: float) -> str:
  return f"{f:g}"


def group_name(arm: str, protocol: str, fraction: float) -> str:
  return f"{arm}-{protocol}-f{fraction_tag(fraction)}"


def cells(study, parts=None) -> list[dict]:
  """The cells of `parts` (names; None = all), part by part, seed-major within a part (an
  interrupted part has complete seeds to pair)."""
  arms = {a["name"]: a for a in study.arms}
  out = []
  for part in study.parts:
    if parts is not None and part["name"] not in parts:
      continue
    for s in part.get("seeds") or study.seeds:
      for arm, proto, f in part["cells"]:
        out.append(
          dict(
            name=f"{group_name(arm, proto, f)}-s{s}",
            part=part["name"],
            claim=part["claim"],
            arm=arm,
            protocol=proto,
            fraction=float(f),
            seed=int(s),
            encoder=arms[arm]["encoder"],
            pretrain=f"{arm}-s{PRETRAIN_SEED}" if arms[arm]["config"] else "",
          )
        )
  return out


def finetune_overrides(study, cell: dict) -> list[str]:
  """seed, fraction, init_from, then the shared fine-tuning overrides, the initialisation's
  recipe, the (encoder, fraction) budget and the protocol (last: it wins)."""
  out = [f"seed={cell['seed']}", f"data.fraction={cell['fraction']}"]
  if cell["pretrain"]:
    out.append(f"init_from={STUDY}/pretrain/{cell['pretrain']}")
  out += list(study.finetune[cell["encoder"]]["overrides"])
  recipe = study.recipes["pretrained" if cell["pretrain"] else "scratch"][cell["encoder"]]
  out += [f"{RECIPE_FIELDS[k]}={v}" for k, v in sorted(recipe.items())]
  for b in study.budgets:
    if b["encoder"] == cell["encoder"] and float(b["fraction"]) == cell["fraction"]:
      out += list(b["overrides"])
      break
  protocols = {p["name"]: p for p in study.protocols}
  return out + list(protocols[cell["protocol"]]["overrides"])


def eval_sets(study) -> list[tuple[str, str]]:
  """(name, LMDB root): the held-out test set, then `lmdb_roots` (relative to the repository
  root, where the runs start)."""
  sets = [("test", f"{STUDY}/data/{study.test.name}")]
  for root in study.lmdb_roots:
    name = base = os.path.basename(os.path.normpath(root)) or "lmdb"
    while name in [n for n, _ in sets]:  # two roots named alike: lmdb, lmdb_2, ...
      name = f"{base}_{len(sets) + 1}"
    sets.append((name, root))
  return sets


def _run(name, kind, spec, overrides, deps, meta) -> dict:
  return dict(
    name=name,
    kind=kind,
    workdir=name,
    deps=deps,
    meta=meta,
    spec=spec,
    overrides=list(overrides),
    args=["-m", "sslocr_jax.main", f"--config={spec}", f"--workdir={STUDY}/{name}"]
    + [f"--config.{o}" for o in overrides],
  )


def make_plan(study, parts=None) -> list[dict]:
  """Every run of the cells of `parts` in execution order: the pretrainings they need, then
  each cell's fine-tuning and evaluations. A run: name, kind (pretrain | finetune |
  evaluate), workdir (relative to the study folder), spec and overrides (its config), args
  (after `python`, the study folder written as {study}), deps, meta (with `cell` / `part`)."""
  arms = {a["name"]: a for a in study.arms}
  runs, pre = [], {}
  cs = cells(study, parts)
  for cell in cs:
    if cell["pretrain"] and cell["pretrain"] not in pre:
      arm = arms[cell["arm"]]
      overrides, _ = pretrain_overrides(study, arm)
      name = f"pretrain/{cell['pretrain']}"
      pre[cell["pretrain"]] = name
      runs.append(
        _run(
          name,
          "pretrain",
          arm["config"],
          [f"seed={PRETRAIN_SEED}"] + overrides,
          [],
          dict(arm=arm["name"], seed=PRETRAIN_SEED, encoder=arm["encoder"], part=cell["part"]),
        )
      )
  for cell in cs:
    ft = study.finetune[cell["encoder"]]
    name = f"finetune/{cell['name']}"
    meta = dict(cell, cell=cell["name"])
    deps = [pre[cell["pretrain"]]] if cell["pretrain"] else []
    runs.append(_run(name, "finetune", ft["config"], finetune_overrides(study, cell), deps, meta))
    for set_name, root in eval_sets(study):
      ev = f"eval/{cell['name']}/{set_name}"
      overrides = [f"checkpoint={STUDY}/{name}", f"data.lmdb_root={root}"]
      overrides += list(study.evaluate["overrides"])
      runs.append(
        _run(ev, "evaluate", study.evaluate["config"], overrides, [name], dict(meta, set=set_name))
      )
  return runs


def run_config(run: dict) -> dict:
  return resolve(run["spec"], run["overrides"])


def _hashed(config: dict) -> dict:
  return {k: v for k, v in config.items() if not any(fnmatch.fnmatch(k, p) for p in HASH_IGNORE)}


def cell_hash(study, cell: dict, runs: list[dict]) -> str:
  """sha256 (16 hex digits) of everything that decides a cell's result: the resolved configs
  of its pretraining, fine-tuning and evaluations (the study folder as {study}) and the test
  set's spec. Code changes do not change it."""
  mine = [
    r
    for r in runs
    if r["meta"].get("cell") == cell["name"]
    or (cell["pretrain"] and r["name"] == f"pretrain/{cell['pretrain']}")
  ]
  payload = dict(
    configs={
      r["kind"] + ("/" + r["meta"]["set"] if r["kind"] == "evaluate" else ""): _hashed(
        run_config(r)
      )
      for r in mine
    },
    test=study.test.to_dict(),
  )
  text = json.dumps(payload, sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def pretrain_hash(run: dict) -> str:
  text = json.dumps(_hashed(run_config(run)), sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def check_study(study) -> list[str]:
  """Problems that would make the study wrong: unknown arms / protocols / fields, a cell in
  two parts, a claim comparing cells no part runs, an arm whose pretraining encoder differs
  from the one its fine-tuning builds, a test set rendered with a validation seed."""
  problems = []
  names = [a["name"] for a in study.arms]
  arms = {a["name"]: a for a in study.arms}
  protocols = [p["name"] for p in study.protocols]
  if len(set(names)) < len(names):
    problems.append(f"arm names repeat: {names}")
  for arm in study.arms:
    if arm["encoder"] not in study.finetune:
      problems.append(
        f"arm {arm['name']}: encoder {arm['encoder']!r} has no fine-tuning "
        f"recipe; valid: {sorted(study.finetune)}"
      )
  owner, parts = {}, [p["name"] for p in study.parts]
  if len(set(parts)) < len(parts):
    problems.append(f"part names repeat: {parts}")
  for part in study.parts:
    for arm, proto, f in part["cells"]:
      g = group_name(arm, proto, f)
      if arm not in arms or proto not in protocols:
        problems.append(f"part {part['name']}: cell {g}: unknown arm or protocol")
      elif g in owner:
        problems.append(f"cell {g} is in parts {owner[g]} and {part['name']}")
      owner.setdefault(g, part["name"])
  for kind, per_encoder in study.recipes.items():
    for enc, recipe in per_encoder.items():
      for k in recipe:
        if k not in RECIPE_FIELDS:
          problems.append(f"recipes.{kind}.{enc}: {k!r} is unknown; valid: {sorted(RECIPE_FIELDS)}")
  claims = [c["name"] for c in study.claims]
  for part in study.parts:
    if part["claim"] not in claims:
      problems.append(f"part {part['name']}: claim {part['claim']!r} is unknown; valid: {claims}")
  for claim in study.claims:
    for c in claim["comparisons"]:
      if c.get("relation", ">") not in (">", ">="):
        problems.append(f"{claim['name']}: relation {c['relation']!r} is not > or >=")
      for arm in (c["arm"], c["baseline"]):
        for f in (c["fraction"], c.get("vs_fraction")):
          if f is not None and group_name(arm, c["protocol"], f) not in owner:
            problems.append(f"{claim['name']}: {group_name(arm, c['protocol'], f)} is in no part")
  if problems:
    return problems
  seen = set()
  for cell in cells(study):  # an unknown field fails here, before any run
    key = (cell["arm"], cell["protocol"], cell["fraction"])
    if key not in seen:
      seen.add(key)
      resolve(study.finetune[cell["encoder"]]["config"], finetune_overrides(study, cell))
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
    got = encoder_signature(
      resolve(arm["config"], pretrain_overrides(study, arm)[0]), arm["encoder"]
    )
    diff = {k: (got.get(k), want.get(k)) for k in set(got) | set(want) if got.get(k) != want.get(k)}
    if diff:
      problems.append(
        f"arm {arm['name']}: pretraining vs fine-tuning encoder differ "
        f"(field: pretrain, finetune): {diff}"
      )
  return problems


def cell_result_path(results_dir: str, cell: dict) -> str:
  """RESULTS_DIR/<part>/<cell>.json: the committed result of a cell."""
  return os.path.join(results_dir, cell["part"], cell["name"] + ".json")


def pretrain_result_path(results_dir: str, run: dict) -> str:
  """RESULTS_DIR/<part>/pretrain/<arm>-s<seed>.json: the curves of a part's pretraining."""
  return os.path.join(results_dir, run["meta"]["part"], run["name"] + ".json")


def parts_of(study, names: str) -> list[str]:
  """Part names from "a,b" (each a part, or a claim: all of its parts; "all": every part)."""
  out = []
  for name in [n.strip() for n in names.split(",") if n.strip()]:
    hits = [p["name"] for p in study.parts if name in ("all", p["name"], p["claim"])]
    if not hits:
      valid = sorted({p["name"] for p in study.parts} | {p["claim"] for p in study.parts})
      raise ValueError(f"part {name!r} is unknown; valid: all, {', '.join(valid)}")
    out += [h for h in hits if h not in out]
  return out


def for_cells(runs: list[dict], names) -> list[dict]:
  """The runs of the cells `names` and the pretrainings they need (in plan order)."""
  names = set(names)
  keep = [r for r in runs if r["meta"].get("cell") in names]
  deps = {d for r in keep for d in r["deps"]}
  return [r for r in runs if r["meta"].get("cell") in names or r["name"] in deps]


def expand(args: list[str], study_dir: str) -> list[str]:
  return [a.replace(STUDY, study_dir) for a in args]


def shown(run: dict, study_dir: str) -> str:
  """The command as a person would type it (from the repository root)."""
  return "python " + shlex.join(expand(run["args"], study_dir))


def train_samples(run: dict) -> int:
  """total_steps x batch_size of a training run's resolved config (0 for an evaluation)."""
  if run["kind"] == "evaluate":
    return 0
  c = run_config(run)
  return int(c["total_steps"]) * int(c["batch_size"])


def run_seconds(study, run: dict) -> float:
  """Estimated wall seconds of a run on the machine `study.cost` describes: training samples
  at the cap (total_steps x batch; early stopping only shortens a run) over the rate of its
  method / encoder and decoder (x frozen_speedup for a frozen encoder), each validation over
  the inference rate, each probe, plus start-up."""
  cost, c = study.cost, run_config(run)
  if run["kind"] == "pretrain":
    every = int(c.get("probe_every", 0) or 0)
    probes = int(c["total_steps"]) // every if every else 0
    rate = cost.pretrain.get(c["method"], min(cost.pretrain.values()))
    return train_samples(run) / rate + cost.start_s + probes * cost.probe_s
  enc = run["meta"]["encoder"]
  infer = cost.infer.get(enc, min(cost.infer.values()))
  if run["kind"] == "evaluate":
    n = study.test.num_samples if run["meta"]["set"] == "test" else 0
    return n / infer + cost.eval_start_s
  rates = {k: v for k, v in cost.train.items() if k.startswith(enc + "_")}
  rate = rates.get(f"{enc}_{c['decoder']}", min(rates.values() or cost.train.values()))
  if c.get("freeze_encoder"):
    rate *= cost.frozen_speedup
  total, every = int(c["total_steps"]), int(c.get("eval_every", 0) or 0)
  evals = -(-total // every) if every else 0
  val = int(c.get("val_data", {}).get("num_samples", 0) or 0)
  return train_samples(run) / rate + evals * val / infer + cost.start_s


def minutes(study, runs: list[dict]) -> float:
  """Estimated minutes of `runs` (run_seconds summed); 0 when `study.cost` has no rates (the
  accelerator design: its rates are not measured)."""
  if "train" not in study.get("cost", {}):
    return 0.0
  return sum(run_seconds(study, r) for r in runs) / 60


def part_minutes(study, part: str) -> float:
  """Estimated minutes of every run of `part` (nothing committed yet)."""
  return minutes(study, make_plan(study, [part]))

r"""The pretraining study (issue 14): four claims of the papers, tested part by part.

Run by `python -m sslocr_jax.study` (not by sslocr_jax.main), one part per sitting
(docs/study.md):

    python -m sslocr_jax.study --config=configs/study.py:cpu --dry_run      # parts, minutes
    python -m sslocr_jax.study --config=configs/study.py:cpu --part=seqclr_maps_ctc
    git add docs/results docs/results.md && git commit -m "study: seqclr_maps_ctc"

A cell is (arm, protocol, labeled fraction, fine-tuning seed): a fine-tuning from its arm's
pretraining (seed 0) or from scratch, then the evaluation of its best validation checkpoint
on the test set. Each finished cell writes its small result (scores, the hash of its resolved
configs, how its fine-tuning ended, wall times, commands; never checkpoints) to
docs/results/<part>/<cell>.json; a part's pretrainings write their curves to
docs/results/<part>/pretrain/<arm>-s0.json. A rerun skips the cells whose committed result has
the hash of their current configs and reruns those whose configs changed (e.g. a recipe
edited here). docs/results.md is regenerated from the committed files only (its Reading
section, written by a person, is kept); `--report_only` rewrites it without running.

The claims (direction, not the papers' figures), each a list of paired comparisons
"arm > baseline" or "arm >= baseline" on word accuracy (same fine-tuning seeds paired), called
reproduced / refuted / inconclusive by the 95% paired t interval of the differences (">=":
non-inferiority within `margin` points):
  seqclr_maps   SeqCLR, frozen encoder, CTC and attention decoders: window >= frame > all;
  dig_halves    DiG >= each official half after fine-tuning (1% labels); frozen encoder:
                contrastive-only > MIM-only;
  scarce        pretrained + scarce labels > scratch + the same labels (DiG, SeqCLR window,
                SimAN; 1% and 10%), and the gap at 1% > the gap at 10%;
  frozen_floor  a frozen pretrained encoder > a frozen random encoder.

Variants (`--config=configs/study.py:VARIANT`):
  (none)  the accelerator-sized study: the paper recipes (dig.py, seqclr.py, siman.py,
          finetune.py defaults: 10 epochs of the labeled subset, validated every eval_every),
          the same cells as `cpu`, one part per claim, a 10,000-line test set;
  cpu     every `:cpu` variant, split into ten parts that each fit 150 minutes of a 2-core CPU
          by the `--dry_run` estimate (at each fine-tuning's step cap: early stopping only
          shortens). Labeled fractions 1% (2,000 lines) and 10% (20,000) of finetune.py:cpu's
          200,000; fine-tuning stops when validation accuracy (512 lines in held-out fonts,
          renderer seed 1,000,003) has not improved for 5 evaluations 100 steps apart (not
          before step 300, never while it is still 0), at the latest at the cap (ResNet 1200 /
          1500 steps at 1% / 10%, ViT 600); the test set (2,000 lines in held-out fonts,
          renderer seed 2,000,003) is scored once per cell, on best/. Each pretraining runs
          650 steps of 32 = 20,800 lines (10.4x the 1% subset) with the representation probe
          every 130 steps (`probe_every`, dropped while the pretraining configs lack it);
  smoke   one tiny part (DiG smoke + scratch, one cell each): what tests/test_study.py runs.

Fields (lists of dicts are edited here, not on the command line):
  arms              name, `config` (pretraining config; "" = from scratch), `overrides`
                    ("field=value" for the pretraining), `encoder` (vit | resnet);
  finetune          per encoder kind: `config` and `overrides` shared by every cell;
  recipes           per initialisation (`scratch` | `pretrained`) and encoder kind, the
                    fine-tuning recipe: encoder_lr_mult, layer_decay, warmup_steps, base_lr,
                    grad_clip (plan.RECIPE_FIELDS names the config field of each);
  budgets           per (encoder, fraction): step cap and evaluation interval;
  protocols         name and overrides: full fine-tuning, frozen encoder + CTC, frozen encoder
                    + attention decoder;
  parts             name, claim, `cells` ((arm, protocol, fraction), ...), each run for every
                    seed; every (arm, protocol, fraction) belongs to one part;
  claims            name, title, `comparisons` (arm, baseline, protocol, fraction, relation
                    ">" | ">=", and for "the gap is larger at fraction f than at g",
                    `vs_fraction` g);
  seeds, margin     fine-tuning seeds (config.seed; the labeled subset is the same for all:
                    data.fraction_seed), paired across arms; the ">=" margin in points;
  pretrain_optional pretraining fields set only where the config has them (`probe_every`);
  test, lmdb_roots  the held-out test set (written once per study folder) and extra LMDBs;
  evaluate          the evaluation's `config` / `overrides` (configs/evaluate.py);
  cost              the `--dry_run` estimator's rates (images/s on a 2-core CPU, from
                    docs/recognition.md and the pilot), start-up times and the part budget.

Encoders must match between pretraining and fine-tuning (the driver checks before running).
"""

import ml_collections

TEST_SEED = 2_000_003
PRETRAIN_STEPS = 650  # x 32 = 20,800 lines: 10.4x the 1% subset (2,000 lines)
PROBE_EVERY = 130  # five probe points per cpu pretraining
SEQCLR = ("seqclr_window", "seqclr_frame", "seqclr_all")
SCARCE_RESNET = ("seqclr_window", "siman", "scratch_resnet")


def _arm(name, config, encoder, overrides=()):
  return dict(name=name, config=config, encoder=encoder, overrides=tuple(overrides))


def _arms(variant: str) -> list:
  """The nine arms; `variant` is "" (accelerator) or "cpu"."""
  v = f":{variant}" if variant else ""
  pre = (f"total_steps={PRETRAIN_STEPS}", f"probe_every={PROBE_EVERY}") if variant else ()
  return [
    _arm("dig", f"configs/dig.py{v}", "vit", pre),
    # The release's halves (methods/dig.py `branches`): contrastive = no mask, no pix
    # projector; mim = no contrastive networks.
    _arm("dig_contrastive_only", f"configs/dig.py{v}", "vit", pre + ("branches=contrastive",)),
    _arm("dig_mim_only", f"configs/dig.py{v}", "vit", pre + ("branches=mim",)),
    _arm("seqclr_window", f"configs/seqclr.py{v}", "resnet", pre + ("instance_mapping=window",)),
    _arm("seqclr_frame", f"configs/seqclr.py{v}", "resnet", pre + ("instance_mapping=frame",)),
    _arm("seqclr_all", f"configs/seqclr.py{v}", "resnet", pre + ("instance_mapping=all",)),
    _arm("siman", f"configs/siman.py{v}", "resnet", pre),
    _arm("scratch_vit", "", "vit"),
    _arm("scratch_resnet", "", "resnet"),
  ]


def _protocols() -> list:
  return [
    dict(name="full", overrides=("freeze_encoder=False",)),
    dict(name="frozen", overrides=("freeze_encoder=True", "decoder=ctc")),
    dict(name="frozen_attn", overrides=("freeze_encoder=True", "decoder=attention")),
  ]


def _cmp(arm, baseline, protocol, fraction, relation=">", vs_fraction=None):
  """One paired comparison: `arm` minus `baseline`, word accuracy, seed by seed; with
  `vs_fraction` g, the difference at `fraction` minus the difference at g (the gap grows)."""
  return dict(
    arm=arm,
    baseline=baseline,
    protocol=protocol,
    fraction=fraction,
    relation=relation,
    vs_fraction=vs_fraction,
  )


def _claims() -> list:
  scarce = []
  for arm, base in (("dig", "scratch_vit"), ("seqclr_window", "scratch_resnet")) + (
    ("siman", "scratch_resnet"),
  ):
    scarce += [
      _cmp(arm, base, "full", 0.01),
      _cmp(arm, base, "full", 0.1),
      _cmp(arm, base, "full", 0.01, vs_fraction=0.1),
    ]
  return [
    dict(
      name="seqclr_maps",
      title="SeqCLR, frozen encoder (CTC and attention decoders): window-to-instance >= "
      "frame-to-instance > all-to-instance (SeqCLR, CVPR 2021, instance-mapping table)",
      comparisons=tuple(
        _cmp(a, b, p, 0.1, rel)
        for p in ("frozen", "frozen_attn")
        for a, b, rel in (
          ("seqclr_window", "seqclr_frame", ">="),
          ("seqclr_frame", "seqclr_all", ">"),
        )
      ),
    ),
    dict(
      name="dig_halves",
      title="DiG >= each of its official halves after fine-tuning; with a frozen encoder the "
      "contrastive half beats the MIM half (DiG, ACM MM 2022, ablation table)",
      comparisons=(
        _cmp("dig", "dig_contrastive_only", "full", 0.01, ">="),
        _cmp("dig", "dig_mim_only", "full", 0.01, ">="),
        _cmp("dig_contrastive_only", "dig_mim_only", "frozen", 0.1),
      ),
    ),
    dict(
      name="scarce",
      title="pretrained + scarce labels beats scratch + the same labels (DiG, SeqCLR window, "
      "SimAN), the gap largest at the smallest fraction",
      comparisons=tuple(scarce),
    ),
    dict(
      name="frozen_floor",
      title="a frozen pretrained encoder beats a frozen random encoder by a wide margin",
      comparisons=(
        _cmp("dig", "scratch_vit", "frozen", 0.1),
        _cmp("seqclr_window", "scratch_resnet", "frozen", 0.1),
        _cmp("siman", "scratch_resnet", "frozen", 0.1),
      ),
    ),
  ]


def _part(name, claim, cells):
  return dict(name=name, claim=claim, cells=tuple(tuple(c) for c in cells))


def _cells(arms, protocol, fraction):
  return [(a, protocol, fraction) for a in arms]


def _parts_cpu() -> list:
  """Ten parts of <= 150 estimated minutes, named after their claim. A part holds the cells
  of at most three pretrainings: run folders (and so pretrained encoders) do not outlive a
  working stretch, so a part pretrains what it needs (seed 0, the same config: the same
  encoder) and a cell that another part's claim also uses is run once, in one part."""
  parts = [
    _part("seqclr_maps_ctc", "seqclr_maps", _cells(SEQCLR, "frozen", 0.1)),
    _part("seqclr_maps_attn", "seqclr_maps", _cells(SEQCLR, "frozen_attn", 0.1)),
  ]
  for tag, arm in (
    ("dig", "dig"),
    ("contrastive", "dig_contrastive_only"),
    ("mim", "dig_mim_only"),
  ):
    # dig-frozen-f0.1 is frozen_floor's DiG cell too
    cells = [(arm, "full", 0.01), (arm, "frozen", 0.1)]
    parts.append(_part(f"dig_halves_{tag}", "dig_halves", cells))
  parts += [
    _part("scarce_dig", "scarce", [("dig", "full", 0.1)]),
    _part("scarce_scratch_vit", "scarce", [("scratch_vit", "full", f) for f in (0.01, 0.1)]),
    _part("scarce_resnet_f0.01", "scarce", _cells(SCARCE_RESNET, "full", 0.01)),
    _part("scarce_resnet_f0.1", "scarce", _cells(SCARCE_RESNET, "full", 0.1)),
    # seqclr_window-frozen-f0.1 is seqclr_maps_ctc's cell
    _part(
      "frozen_floor",
      "frozen_floor",
      _cells(("siman", "scratch_resnet", "scratch_vit"), "frozen", 0.1),
    ),
  ]
  return parts


def _parts_default() -> list:
  """One part per claim (an accelerator has no 150-minute stretch), the same cells."""
  cpu = _parts_cpu()
  return [
    _part(claim, claim, [c for p in cpu if p["claim"] == claim for c in p["cells"]])
    for claim in ("seqclr_maps", "dig_halves", "scarce", "frozen_floor")
  ]


def _recipe(encoder_lr_mult=1.0, layer_decay=1.0, warmup_steps=200, base_lr=1e-3, grad_clip=5.0):
  return dict(
    encoder_lr_mult=encoder_lr_mult,
    layer_decay=layer_decay,
    warmup_steps=warmup_steps,
    base_lr=base_lr,
    grad_clip=grad_clip,
  )


def _recipes(variant: str) -> ml_collections.ConfigDict:
  """Fine-tuning recipe per initialisation and encoder kind (plan.RECIPE_FIELDS maps each
  field to its config path). cpu: finetune.py:cpu's lr 1e-3 and 200 warm-up steps, plus
  gradient clipping 5 (the cpu60 recipe); a pretrained encoder learns slower than the fresh
  head (ResNet: lr x0.3; ViT: layer-wise decay 0.75, the DiG release's), the levers of
  docs/recognition.md. Not yet selected on validation (docs/study.md says how)."""
  if variant == "cpu":
    return ml_collections.ConfigDict(
      dict(
        scratch=dict(vit=_recipe(), resnet=_recipe()),
        pretrained=dict(vit=_recipe(layer_decay=0.75), resnet=_recipe(encoder_lr_mult=0.3)),
      )
    )
  # Accelerator: finetune.py's DiG recipe (lr 1e-4 per 256, warm-up 1 epoch of 10, layer
  # decay 0.75) for pretrained ViTs; scratch without layer decay; ResNet as SeqCLR's.
  return ml_collections.ConfigDict(
    dict(
      scratch=dict(
        vit=dict(layer_decay=1.0),
        resnet=dict(layer_decay=1.0),
      ),
      pretrained=dict(
        vit=dict(layer_decay=0.75),
        resnet=dict(layer_decay=1.0, encoder_lr_mult=0.3),
      ),
    )
  )


def _cost() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(
    dict(
      # docs/recognition.md "Model inference and training, per decoder" (batch 32 training,
      # batch 256 inference, finetune.py:cpu models, 2-core VM at load ~4: lower bounds; the
      # quiet machine gave ~92 / ~24 img/s training, so the estimate errs long).
      train={"resnet_ctc": 80.4, "resnet_attention": 74.1, "vit_ctc": 21.3, "vit_attention": 19.4},
      infer={"resnet": 288.0, "vit": 43.8},
      # Pretraining samples/s with start-up: DiG cpu 200 x 32 in ~10 min (README quick start);
      # SeqCLR 300 x 32 in 4.4 min, SimAN 200 x 32 in 4.1 min (docs/results_pilot.md).
      pretrain={"dig": 10.0, "seqclr": 36.0, "siman": 26.0},
      # A frozen encoder skips its backward pass: an assumed 1.3x of the full rate (not
      # measured yet; compare with the committed cells' wall times).
      frozen_speedup=1.3,
      start_s=45.0,  # process start, config, data, compilation of a training run
      eval_start_s=30.0,  # the same for an evaluation (docs/recognition.md: 29 s ResNet)
      probe_s=20.0,  # one representation probe (not measured: the probe is not merged yet)
      budget_min=150.0,
    )
  )


def get_config(arg=None):
  variant = (arg or "").strip()
  if variant not in ("", "cpu", "smoke"):
    raise ValueError(f"variant {variant!r} is unknown; valid: (none), cpu, smoke")
  c = ml_collections.ConfigDict()
  c.variant = variant or "default"
  c.seeds = (0, 1, 2)
  c.margin = 1.0  # percentage points a ">=" comparison may lose and still hold
  c.protocols = _protocols()
  c.claims = _claims()
  c.pretrain_optional = ("probe_every",)
  c.lmdb_roots = ()
  c.cost = _cost()
  c.test = ml_collections.ConfigDict(
    dict(
      name="synthetic_heldout_test",
      num_samples=10_000,
      seed=TEST_SEED,
      font_split="heldout",
      word_prob=0.6,
    )
  )
  c.evaluate = ml_collections.ConfigDict(dict(config="configs/evaluate.py", overrides=()))

  if variant == "smoke":
    c.arms = [
      _arm("dig", "configs/dig.py:smoke", "vit", ["total_steps=4", "log_every=1"]),
      _arm("scratch_vit", "", "vit"),
    ]
    ft = ("total_steps=4", "eval_every=2", "log_every=1", "early_stop_patience=1")
    c.finetune = ml_collections.ConfigDict(
      {
        "vit": dict(config="configs/finetune.py:smoke", overrides=ft),
        "resnet": dict(config="configs/finetune.py:smoke,encoder=resnet", overrides=ft),
      }
    )
    c.recipes = ml_collections.ConfigDict(
      dict(
        scratch=dict(vit=dict(warmup_steps=2), resnet=dict()),
        pretrained=dict(vit=dict(encoder_lr_mult=0.5, warmup_steps=1), resnet=dict()),
      )
    )
    c.budgets = []
    c.protocols = c.protocols[:1]
    c.parts = [_part("smoke", "smoke", [("dig", "full", 0.1), ("scratch_vit", "full", 0.1)])]
    c.claims = [
      dict(
        name="smoke",
        title="smoke: DiG (4 steps) vs scratch",
        comparisons=(_cmp("dig", "scratch_vit", "full", 0.1),),
      )
    ]
    c.seeds = (0,)
    c.test.num_samples = 32
    c.evaluate = ml_collections.ConfigDict(dict(config="configs/evaluate.py:smoke", overrides=()))
    return c

  cpu = variant == "cpu"
  c.arms = _arms(variant)
  ft = "configs/finetune.py" + (":cpu" if cpu else "")
  sep = "," if cpu else ":"
  # Early stopping on held-out-font validation (finetune.py's val_data, best/ evaluated on the
  # test set): give up after 5 evaluations without a new best (cpu: 100 steps apart, not
  # before step 300).
  stop = ("early_stop_patience=5",) + (("early_stop_min_steps=300",) if cpu else ())
  c.finetune = ml_collections.ConfigDict(
    {
      "vit": dict(config=ft, overrides=stop),
      "resnet": dict(config=f"{ft}{sep}encoder=resnet", overrides=stop),
    }
  )
  c.recipes = _recipes(variant)
  if not cpu:  # no 150-minute stretch, and no measured accelerator rates to estimate with
    c.cost = ml_collections.ConfigDict(dict(budget_min=0.0))
  # Step caps per (encoder, fraction) (cpu only: the accelerator recipes run their 10 epochs).
  c.budgets = (
    [
      dict(encoder="resnet", fraction=0.01, overrides=("total_steps=1200", "eval_every=100")),
      dict(encoder="resnet", fraction=0.1, overrides=("total_steps=1500", "eval_every=100")),
      dict(encoder="vit", fraction=0.01, overrides=("total_steps=600", "eval_every=100")),
      dict(encoder="vit", fraction=0.1, overrides=("total_steps=600", "eval_every=100")),
    ]
    if cpu
    else []
  )
  c.parts = _parts_cpu() if cpu else _parts_default()
  if cpu:
    c.test.num_samples = 2000
    c.test.word_prob = 0.9  # as finetune.py:cpu's training and validation lines
  return c

r"""The pretraining study: which pretraining helps recognition, at which labeled fraction.

Run by `python -m sslocr_jax.study` (not by sslocr_jax.main):

    python -m sslocr_jax.study --config=configs/study.py:cpu --study_dir=runs/study \
        [--only=REGEX] [--dry_run] [--results=docs/results.md]

Variants (`--config=configs/study.py:VARIANT`):
  (none)   accelerator-sized: the paper recipes (dig.py, seqclr.py, siman.py, finetune.py
           defaults), fractions 1% / 10% / 100%, 3 seeds, a 10,000-line test set;
  cpu      the same study with every `:cpu` variant: 7 pretrainings (54,400 samples) + 144
           fine-tunings (96,000 samples each at finetune.py:cpu's 1500 x 64) + 144 evaluations;
           with finetune.py:cpu's 2000 x 32 per fine-tuning at the ~21 (ViT) / ~80 (ResNet)
           training images/s measured here, about 50 + 11 minutes per ViT / ResNet run, i.e.
           about 3 days on a 2-core CPU (`--dry_run` prints the samples left);
  pilot    what fits in about 80 minutes per seed on a 2-core CPU: the cpu study cut to the
           ResNet arms (seqclr_window, siman, scratch_resnet), full fine-tuning, fractions
           10% / 100%, seeds 0 and 1 (`--only=-s0` runs one seed), a 1000-line test set;
  smoke    two arms (DiG smoke + scratch), one fraction, one seed, one protocol, tiny steps:
           what tests/test_study.py runs end to end.

Fields (overridable on the command line, except the lists `arms` and `protocols`: edit those
here): `--config.seeds="(0,)" --config.finetune.vit.overrides="('total_steps=3000',)"`.
  arms              ordered list of dicts: `name`, `config` (a pretraining config string;
                    "" = no pretraining: the from-scratch baseline), `overrides` (tuple of
                    "field=value" passed as --config.field=value), `encoder` (vit | resnet: picks
                    the fine-tuning recipe in `finetune`), optional `protocols` (names; default
                    all of `protocols`);
  finetune          per encoder kind: `config` (fine-tuning config string) and `overrides`: the
                    recipe. Tuning the recipe is a change here, not in code;
  protocols         ordered list of dicts: `name` and the `overrides` that make it
                    (full fine-tuning / frozen encoder = decoder evaluation);
  fractions, seeds  labeled fractions (data.fraction) and fine-tuning seeds (config.seed);
  pretrain_seeds    pretraining seeds; fine-tuning seed s starts from the pretraining of seed s
                    when s is one of them, else from the first one;
  test              the held-out test set: synthetic lines in held-out fonts, with a seed other
                    than validation's (finetune.py's val_data.seed = 1_000_003); written once to
                    STUDY_DIR/data/<name> with sources.write_lmdb and scored with `evaluate`;
  lmdb_roots        extra folders of LMDBs (e.g. the standard benchmarks), each scored too;
  evaluate          `config` / `overrides` of the evaluation (configs/evaluate.py).

Encoders must match between pretraining and fine-tuning (the driver checks before running):
finetune.py:cpu's ViT is dig.py:cpu's, its resnet is seqclr.py:cpu's and siman.py:cpu's.
"""

import ml_collections

TEST_SEED = 2_000_003


def _arm(name, config, encoder, overrides=(), protocols=None):
  return dict(
    name=name,
    config=config,
    encoder=encoder,
    overrides=tuple(overrides),
    protocols=tuple(protocols) if protocols is not None else None,
  )


def _arms(variant: str) -> list:
  """The eight arms; `variant` is "" (accelerator) or "cpu"."""
  v = f":{variant}" if variant else ""
  scratch = ["full"]  # a frozen random encoder is not a baseline worth its runs
  return [
    _arm("dig", f"configs/dig.py{v}", "vit"),
    # The release's halves (methods/dig.py `branches`): contrastive = no mask, no pix
    # projector; mim = no contrastive networks.
    _arm("dig_contrastive_only", f"configs/dig.py{v}", "vit", ["branches=contrastive"]),
    _arm("dig_mim_only", f"configs/dig.py{v}", "vit", ["branches=mim"]),
    _arm("seqclr_window", f"configs/seqclr.py{v}", "resnet", ["instance_mapping=window"]),
    _arm("seqclr_frame", f"configs/seqclr.py{v}", "resnet", ["instance_mapping=frame"]),
    _arm("seqclr_all", f"configs/seqclr.py{v}", "resnet", ["instance_mapping=all"]),
    _arm("siman", f"configs/siman.py{v}", "resnet"),
    _arm("scratch_vit", "", "vit", protocols=scratch),
    _arm("scratch_resnet", "", "resnet", protocols=scratch),
  ]


def _protocols() -> list:
  return [
    dict(name="full", overrides=("freeze_encoder=False",)),
    dict(name="frozen", overrides=("freeze_encoder=True",)),
  ]


def get_config(arg=None):
  variant = (arg or "").strip()
  if variant not in ("", "cpu", "pilot", "smoke"):
    raise ValueError(f"variant {variant!r} is unknown; valid: (none), cpu, pilot, smoke")
  c = ml_collections.ConfigDict()
  c.variant = variant or "default"
  c.fractions = (0.01, 0.1, 1.0)
  c.seeds = (0, 1, 2)
  c.pretrain_seeds = (0,)
  c.protocols = _protocols()
  c.lmdb_roots = ()
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
    c.finetune = ml_collections.ConfigDict(
      {
        "vit": dict(
          config="configs/finetune.py:smoke",
          overrides=("total_steps=2", "eval_every=2", "log_every=1"),
        ),
        "resnet": dict(config="configs/finetune.py:smoke,encoder=resnet", overrides=()),
      }
    )
    c.protocols = c.protocols[:1]
    c.fractions = (0.1,)
    c.seeds = (0,)
    c.test.num_samples = 32
    c.evaluate = ml_collections.ConfigDict(dict(config="configs/evaluate.py:smoke", overrides=()))
    return c

  pilot = variant == "pilot"
  variant = "cpu" if pilot else variant
  c.arms = _arms(variant)
  ft = "configs/finetune.py" + (":cpu" if variant == "cpu" else "")
  sep = "," if variant == "cpu" else ":"
  c.finetune = ml_collections.ConfigDict(
    {
      "vit": dict(config=ft, overrides=()),
      "resnet": dict(config=f"{ft}{sep}encoder=resnet", overrides=()),
    }
  )
  if variant == "cpu":
    c.test.num_samples = 2000
    c.test.word_prob = 0.9  # as finetune.py:cpu's training and validation lines
  if pilot:
    c.arms = [a for a in c.arms if a["name"] in ("seqclr_window", "siman", "scratch_resnet")]
    c.protocols = c.protocols[:1]
    c.fractions = (0.1, 1.0)
    c.seeds = (0, 1)
    c.test.num_samples = 1000
  return c

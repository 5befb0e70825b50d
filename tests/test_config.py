"""Config variants, parsing and the CLI's errors for unknown fields."""

import sys

import pytest

from sslocr_jax import config_utils
from tests.helpers import ROOT, load_config


def test_variants():
  default = load_config("dig")
  assert default.model.embed_dim == 384 and default.batch_size == 1024
  assert default.optim.warmup_fraction == 0.03 and default.optim.end_lr == 1e-5
  assert load_config("dig", "size=tiny").model.embed_dim == 192
  assert load_config("dig", "size=base").model.num_heads == 8
  cpu = load_config("dig", "cpu")
  assert cpu.model.depth == 4 and cpu.model.embed_dim == 128
  smoke = load_config("dig", "smoke")
  assert smoke.total_steps <= 20 and "seed" in smoke


def test_parse_arg_rejects_unknown_words():
  assert config_utils.parse_arg("a=3,b", a=1, b=False).to_dict() == {"a": 3, "b": True}
  with pytest.raises(ValueError, match="unknown; valid"):
    config_utils.parse_arg("sise=tiny", size="small")


def test_cli_unknown_field_lists_valid_fields(tmp_path, monkeypatch, capsys):
  """The CLI's entry point on the command line as typed (in-process: the check runs before
  absl parses anything, so a subprocess would only add a jax import)."""
  from sslocr_jax import main as main_lib  # pylint: disable=g-import-not-at-top

  def not_reached(*args, **kwargs):
    raise AssertionError("the unknown field was not caught before app.run")

  monkeypatch.chdir(ROOT)
  monkeypatch.setattr(main_lib.app, "run", not_reached)
  monkeypatch.setattr(
    sys,
    "argv",
    [
      "sslocr_jax.main",
      "--config=configs/dig.py:smoke",
      f"--workdir={tmp_path}",
      "--config.totl_steps=3",
    ],
  )
  with pytest.raises(SystemExit) as e:
    main_lib._entry()  # pylint: disable=protected-access
  assert e.value.code != 0
  err = capsys.readouterr().err
  assert "unknown config field 'totl_steps'" in err
  assert "total_steps" in err


@pytest.mark.parametrize("name", ["dig", "seqclr", "siman", "finetune"])
def test_every_training_config_accepts_the_launchers_flags(name):
  """launch/gpu.sh, launch/tpu_vm.sh and docs/scaling.md pass these to any config."""
  config = load_config(name)
  assert config.distributed is False
  assert (
    config.dtype == "auto" and config.mesh.fsdp == 1
  )  # issue 19: bfloat16 on GPU/TPU, float32 on CPU
  for field in ("batch_size", "grad_accum_steps", "total_steps"):
    assert field in config, field


def test_warmup_is_a_share_of_the_run_unless_given_in_steps():
  """DiG's release states warm-ups in epochs (fine-tuning: 1 of 10) or as 5000 of ~154k steps;
  a fixed step count would be a quarter of a short run."""
  from sslocr_jax.train import optim  # pylint: disable=g-import-not-at-top

  ft = load_config("finetune")
  assert ft.optim.base_lr == 1e-4 and ft.optim.lr_batch_base == 256
  assert optim.peak_lr(ft.optim, 2048) == pytest.approx(8e-4)  # the release's 8 x 256
  assert optim.warmup_steps(ft.optim, ft.total_steps) == round(ft.total_steps / 10)
  assert optim.warmup_steps(load_config("dig").optim, 19531) == 586
  assert optim.warmup_steps(load_config("dig", "cpu").optim, 200) == 20  # steps win
  sched = optim.schedule(ft.optim, 256, 1000)
  assert float(sched(0)) == 0.0 and float(sched(100)) == pytest.approx(1e-4)
  assert float(sched(50)) == pytest.approx(0.5e-4)
  assert (ft.transformer.style, ft.transformer.mlp_dim, ft.ctc.head) == ("dig", 256, "dig")
  assert (ft.model.dropout_rate, ft.model.attn_dropout_rate, ft.model.drop_path_rate) == (
    0.1,
    0.1,
    0.1,
  )
  assert not ft.model.pos_dropout and ft.loss_norm == "word" and ft.augment_recipe == "dig"


def test_lr_mult_scales_one_network_updates():
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  import ml_collections  # pylint: disable=g-import-not-at-top
  from sslocr_jax.train import optim  # pylint: disable=g-import-not-at-top

  params = {"encoder": {"w": jnp.ones((2, 2))}, "decoder": {"w": jnp.ones((2, 2))}}
  grads = {"encoder": {"w": jnp.full((2, 2), 0.5)}, "decoder": {"w": jnp.full((2, 2), 0.5)}}
  cfg = ml_collections.ConfigDict(
    dict(
      name="sgd", momentum=0.0, base_lr=0.1, warmup_steps=0, end_lr=0.1, lr_mult=dict(encoder=0.3)
    )
  )
  tx, _ = optim.make_optimizer(cfg, params, 1, 10)
  updates, _ = tx.update(grads, tx.init(params), params)
  assert float(updates["encoder"]["w"][0, 0]) == pytest.approx(-0.015)
  assert float(updates["decoder"]["w"][0, 0]) == pytest.approx(-0.05)


def test_header_and_vit_sizes_come_from_one_place():
  """Every training config starts from `config_utils.header`; every ViT size (including the
  cpu / smoke variants, which must agree for init_from) comes from `models/vit.SIZES` or
  `config_utils.SMALL_VIT_SIZES`."""
  from sslocr_jax.models import vit

  c = config_utils.header("pretrain", "x", batch_size=1000, epochs=2, num_samples=5000)
  assert (c.task, c.method, c.seed, c.distributed, c.dtype) == ("pretrain", "x", 0, False, "auto")
  assert (c.data.num_samples, c.total_steps, c.schedule_steps) == (5000, 10, 0)
  assert config_utils.vit_size(vit.SIZES, "tiny") == dict(size="tiny", **vit.SIZES["tiny"])
  with pytest.raises(ValueError, match="size='huge' is unknown"):
    config_utils.vit_size(vit.SIZES, "huge")
  for variant in ("", "cpu", "smoke", "size=tiny"):
    models = [
      load_config(n, ",".join(filter(None, [variant, e]))).model
      for n, e in (("dig", ""), ("siman", "encoder=vit"), ("finetune", ""))
    ]
    size = variant.removeprefix("size=") or "small"
    want = config_utils.vit_size(vit.SIZES, size)
    for m in models:
      assert {k: m[k] for k in want} == want, (variant, m.size)


def test_resnet_paper_size_comes_from_the_model():
  """seqclr, siman and finetune (encoder=resnet) take the CNN + BiLSTM size from
  `models/resnet.SIZE` (one table), so a pretraining's encoder fine-tunes unchanged."""
  from sslocr_jax.models import resnet

  for name, variant in (("seqclr", ""), ("siman", ""), ("finetune", "encoder=resnet")):
    m = load_config(name, variant).model
    assert m.name == "resnet"
    assert {
      k: tuple(v) if isinstance(v, list) else v for k, v in m.items() if k in resnet.SIZE
    } == (resnet.SIZE), name

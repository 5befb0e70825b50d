"""Benchmark accounting (benchmarks/common.py) and the PyTorch baseline (benchmarks/dig_torch.py).

MFU must be the model's FLOPs over the peak of every device that ran them, with the peak of
the dtype actually used; XLA's cost analysis is one device's program. Checked with the 8 fake
CPU devices of conftest.py, no accelerator needed.
"""

import jax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P
import numpy as np
import pytest

from benchmarks import common
from tests.helpers import load_config

H100 = "NVIDIA H100 80GB HBM3"


def test_peak_is_per_device_and_fp32_is_tf32_on_gpus():
  assert common.peak_flops("bfloat16", H100) == 989e12
  assert common.peak_flops("float32", H100) == 494.7e12  # TF32 tensor cores, not 67e12
  assert common.peak_flops("float32", "NVIDIA A100-SXM4-40GB") == 156e12
  assert common.peak_flops("float32", "cpu") is None
  assert common.peak_flops("bfloat16", "TPU v5 lite") == 197e12


def test_dig_small_step_flops_closed_form():
  config = load_config("dig")  # paper recipe: ViT-Small, batch 1024
  d, n = 384, 256
  block = 2 * n * (3 * d * d + d * d + 8 * d * d) + 4 * n * n * d
  patch = 2 * n * 48 * d
  encoder = 2 * (3 * 12 * block + 2 * patch) + 2 * (12 * block + patch)
  heads = (
    4 * 2 * n * (d * 512 + 512 * 512 + 512 * d)  # pix projector, + momentum
    + 4 * 2 * 8 * (d * 4096 + 4096 * 4096 + 4096 * 256)  # projector, + momentum
    + 3 * 2 * 8 * (256 * 4096 * 2)  # predictor
    + 3 * 2 * n * (d * 192 + 192 * 192 + 192 * 48)
  )  # MIM head, view 1
  contrast = 8 * 4096 * 4096 * 256 // 1024
  got = common.dig_step_flops(config, 1024)
  assert got == encoder + heads + contrast
  assert 99e9 < got < 101e9  # ~100 GFLOP per sample
  assert common.encoder_forward_flops(config) == 12 * block + patch


def test_mfu_uses_model_flops_and_all_devices_peak():
  config = load_config("dig")
  config.batch_size, config.dtype = 1024, "bfloat16"
  per_sample = common.dig_step_flops(config, 1024)
  want = per_sample * 5000.0 / (8 * 989e12)
  got = common.step_mfu(config, 5000.0, compiled_per_device=1.0, num_devices=8, device_kind=H100)
  np.testing.assert_allclose(got, want, rtol=1e-12)  # compiled FLOPs unused when a formula exists
  assert common.step_mfu(config, 5000.0, num_devices=8, device_kind="cpu") is None
  config.method = "seqclr"  # no formula: compiled per-device FLOPs x devices
  np.testing.assert_allclose(
    common.step_mfu(config, 5000.0, compiled_per_device=2e12, num_devices=8, device_kind=H100),
    2e12 * 8 / 1024 * 5000.0 / (8 * 989e12),
    rtol=1e-12,
  )


def test_compiled_flops_are_one_devices_share_on_fake_devices():
  devices = jax.devices()[:8]
  assert len(devices) == 8
  mesh = jax.sharding.Mesh(np.array(devices), ("data",))
  x = jax.device_put(np.ones((64, 32), np.float32), NamedSharding(mesh, P("data")))
  w = jax.device_put(np.ones((32, 16), np.float32), NamedSharding(mesh, P()))
  f = jax.jit(lambda x, w: x @ w)
  per_device = common.compiled_flops(f, x, w)
  assert per_device == 2 * 64 * 32 * 16 / 8  # the batch is split: each device does 1/8


def test_torch_baseline_has_official_layout_and_flops():
  torch = pytest.importorskip("torch")
  from benchmarks import dig_torch  # pylint: disable=g-import-not-at-top
  from sslocr_jax.train import torch_state  # pylint: disable=g-import-not-at-top
  from sslocr_jax.methods import dig  # pylint: disable=g-import-not-at-top
  from sslocr_jax.train import state as state_lib  # pylint: disable=g-import-not-at-top

  threads = torch.get_num_threads()
  torch.set_num_threads(1)  # a tiny model: thread start-up and spinning would dominate
  try:
    _check_torch_baseline(torch, dig_torch, torch_state, dig, state_lib)
  finally:
    torch.set_num_threads(threads)


def _check_torch_baseline(torch, dig_torch, torch_state, dig, state_lib):
  config = load_config("dig", "smoke")
  torch.manual_seed(0)
  model = dig_torch.DiG.from_config(config)
  flat = {k: v.numpy() for k, v in model.state_dict().items()}
  # The official checkpoint layout: every key and shape that train/torch_state.py reads from a
  # release .pth, no more, no less (import_state raises on a missing or unknown key).
  imported = torch_state.import_state(flat, config, "all")
  batch = {"image1": np.zeros((2, 32, 128, 3), np.uint8), "mask": np.zeros((2, 256), bool)}
  ours = jax.eval_shape(lambda: dig.init_variables(config, jax.random.PRNGKey(0), batch))
  trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
  assert trainable == state_lib.count_params(ours["params"])
  assert state_lib.count_params(imported["params"]) == trainable
  # FLOPs per step by torch's counter = the analytic count with the release's 2-view MIM head.
  assert dig_torch.step_flops(model, 4) == 4 * common.dig_step_flops(config, 4, mim_views=2)
  # One real step runs and changes the online weights only.
  before = {k: v.clone() for k, v in model.state_dict().items()}
  loss = dig_torch.make_step(model, lr=1e-3)(*dig_torch.example_inputs(4))
  assert np.isfinite(loss)
  after = model.state_dict()
  assert not torch.equal(
    before["encoder.blocks.0.mlp.fc1.weight"], after["encoder.blocks.0.mlp.fc1.weight"]
  )
  # momentum copy moved by (1 - m) toward the online weights of before the update
  torch.testing.assert_close(
    after["momentum_encoder.blocks.0.mlp.fc1.weight"],
    before["momentum_encoder.blocks.0.mlp.fc1.weight"],
  )


def test_ab_step_swaps_in_a_revisions_vit_module():
  # benchmarks/ab_step.py builds A with models/vit.py as it is at a git revision: the loaded
  # module replaces the registered one only inside `vit_module` (encoders.build imports it by
  # name), and has the same sizes (the param trees of A and B must match).
  import importlib  # pylint: disable=g-import-not-at-top

  from benchmarks import ab_step  # pylint: disable=g-import-not-at-top
  from sslocr_jax.models import vit  # pylint: disable=g-import-not-at-top

  old = ab_step.module_at("HEAD")
  assert old is not vit and old.SIZES == vit.SIZES
  with ab_step.vit_module(old):
    assert importlib.import_module(ab_step.MODULE) is old
  assert importlib.import_module(ab_step.MODULE) is vit


def test_profile_reads_gpu_custom_calls_and_tuple_shapes():
  # Lines of an XLA:GPU DiG step (H200 dump, shortened): cuBLAS GEMMs and cuDNN attention are
  # custom calls with tuple shapes; each must be found and put in its group.
  from benchmarks import profile_step  # pylint: disable=g-import-not-at-top

  hlo = "\n".join(
    [
      "  %custom-call.126 = (bf16[131072,1152]{1,0}, s8[33554432]{0}) custom-call(%b.1, %w.4), "
      'custom_call_target="__cublas$lt$matmul", metadata={op_name="jit(train_step)/'
      'jvp(Encoder)/blocks_0/attn/qkv/dot_general" scheduling_name="custom-call.126"}',
      "  %dot_product_attention_bwd.168 = (bf16[512,6,256,64]{3,1,2,0}, u8[204]{0}) "
      'custom-call(%b.42), custom_call_target="__cudnn$fmhaSoftmaxBackward", metadata={op_name='
      '"jit(train_step)/transpose(jvp(Encoder))/blocks_2/attn/dot_product_attention_bwd"}',
      "  %input_add_reduce_fusion.20 = (bf16[256,1536]{1,0}, bf16[512,256,1536]{2,1,0}) "
      "fusion(%g.2512), kind=kInput, calls=%fused_add_reduce.20, metadata={op_name="
      '"jit(train_step)/transpose(jvp(Encoder))/blocks_1/mlp/fc1/reduce_sum"}',
      "  %loop_multiply_fusion.7 = bf16[512,256,1536]{2,1,0} fusion(%g.2528), kind=kLoop, "
      'calls=%fused_multiply.7, metadata={op_name="jit(train_step)/jvp(Encoder)/blocks_5/mlp/mul"}',
    ]
  )
  ops = profile_step.hlo_ops(hlo)
  assert ops["custom-call.126"][1] == "dot"
  assert ops["dot_product_attention_bwd.168"][1] == "fmha"
  times = {name: 1e-3 for name in ops}
  rows = {r["group"]: r for r in profile_step.breakdown(times, ops)}
  assert rows["attn: qkv matmul"]["fwd_ms"] == pytest.approx(1.0)
  assert rows["attn: fused kernel (cuDNN), fwd+bwd"]["bwd_ms"] == pytest.approx(1.0)
  assert rows["mlp: GELU, biases"]["ms"] == pytest.approx(2.0)  # fc1 bias grad + GELU mul
  assert "other" not in rows


def test_vs_tesseract_scores_by_scored_label_length():
  """Lines are grouped by their [0-9a-z] length (punctuation and case do not count), and each
  group's word accuracy is the filtered one."""
  from benchmarks import vs_tesseract  # pylint: disable=g-import-not-at-top

  labels = ["Net", "it's", "2446pm", "recognition", "JPKGHGMKKIUDX"]
  preds = ["net", "its", "2446pn", "recognition", "jpkghgmkkiudx"]
  assert [vs_tesseract.length_bucket(t) for t in labels] == ["1-3", "1-3", "4-7", "8-11", "12+"]
  assert vs_tesseract.by_length(preds, labels) == {
    "1-3": 100.0,
    "4-7": 0.0,
    "8-11": 100.0,
    "12+": 100.0,
  }
  families = ["STIXGeneral", "Ubuntu", "STIXGeneral", "Ubuntu", "Ubuntu"]
  assert vs_tesseract.by_group(preds, labels, families) == {"STIXGeneral": 50.0, "Ubuntu": 100.0}


def test_vs_tesseract_lines_carry_their_held_out_family():
  """Each test line comes with the family of the face that drew it, a held-out one."""
  from benchmarks import vs_tesseract  # pylint: disable=g-import-not-at-top
  from sslocr_jax.data import charset as charset_lib  # pylint: disable=g-import-not-at-top
  from sslocr_jax.data import render  # pylint: disable=g-import-not-at-top

  images, labels, families, left_out = vs_tesseract.test_lines(12, 3000017, 0.6, 32)
  assert len(images) == len(labels) == len(families) == 12 - left_out
  assert set(families) <= set(render.HELDOUT_FAMILIES) and len(set(families)) > 1
  r = render.Renderer(seed=3000017, font_split="heldout")
  kept = [i for i in range(12) if charset_lib.filter_label_for_metric(r.render(i)[1])]
  assert families == [r.faces[r.sample_text(i)[0]].family for i in kept]


def test_probe_checkpoints_reads_the_encoder_a_fine_tuning_froze(smoke_run):
  """The probe of a frozen-encoder fine-tuning equals the probe of the pretraining it loaded
  (same encoder, bit for bit), and the generic frames equal the method's `probe_features`."""
  from benchmarks import probe_checkpoints as pc  # pylint: disable=g-import-not-at-top
  from sslocr_jax.methods import common as method_common  # pylint: disable=g-import-not-at-top
  from sslocr_jax.methods import dig  # pylint: disable=g-import-not-at-top
  from sslocr_jax.train import resolve  # pylint: disable=g-import-not-at-top

  dig_dir, rec_dir = smoke_run("dig"), smoke_run("recognition")
  probe_config = load_config("dig", "smoke")
  probe_config.probe.update(train_samples=24, eval_samples=16, steps=20)
  pre, rec = resolve.resolve(dig_dir), resolve.resolve(rec_dir)
  images = np.random.default_rng(0).integers(0, 256, (4, 32, 128, 3), dtype=np.uint8)
  config = pc.probe_config_for(pre.config, probe_config)
  ours = method_common.encoder_probe_features(rec.params, rec.model_state, images, config)
  theirs = dig.probe_features(pre.params, pre.model_state, images, pre.config)
  np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs))
  table = pc.rows([dig_dir, rec_dir], probe_config, with_random=True)
  assert [r["encoder"].split(" (")[0] for r in table[::2]] == [dig_dir, rec_dir]
  strip = lambda r: {k: v for k, v in r.items() if k != "encoder"}
  assert strip(table[0]) == strip(table[2])  # pretraining == the fine-tuning that froze it
  assert strip(table[1]) == strip(table[3])  # the same random encoder (seed 0) both times
  assert all(0 <= r["probe_one_minus_ned"] <= 100 for r in table)

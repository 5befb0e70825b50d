"""launch/: the launchers' dry runs print every command (and run none), the Colab install cell
can be re-run, and sslocr_jax.main stops when a process sees another device count than asked.

A stub `gcloud` first on PATH records any call: a dry run must make none.
"""

import json
import os
import re
import subprocess

import pytest

from sslocr_jax import main as main_lib
from tests.helpers import ROOT


@pytest.fixture
def launcher(tmp_path):
  """`run(script, *args, **env) -> (stdout, returncode)`, with a recording stub gcloud."""
  bin_dir, calls = tmp_path / "bin", tmp_path / "gcloud_calls"
  bin_dir.mkdir()
  (bin_dir / "gcloud").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
  (bin_dir / "gcloud").chmod(0o755)
  keep = ("HOME", "LANG")
  base = {k: os.environ[k] for k in keep if k in os.environ}
  base["PATH"] = f"{bin_dir}:/usr/bin:/bin"

  def run(script, *args, **env):
    p = subprocess.run(
      ["bash", os.path.join(ROOT, "launch", script), *args],
      env={**base, **env},
      capture_output=True,
      text=True,
      cwd=ROOT,
    )
    assert not calls.exists(), calls.read_text()  # nothing ran for real
    return p.stdout + p.stderr, p.returncode

  return run


def _commands(out: str) -> list[str]:
  return [line[2:] for line in out.splitlines() if line.startswith("+ ")]


def test_tpu_vm_dry_run_prints_every_command(launcher):
  out, rc = launcher(
    "tpu_vm.sh",
    "all",
    "--config.total_steps=10",
    "--config.note=a b",
    DRY_RUN="1",
    BUCKET="gs://my-bucket",
    SPOT="1",
    ACCELERATOR_TYPE="v5litepod-8",
  )
  assert rc == 0, out
  cmds = _commands(out)
  zone = "--zone=us-west4-a"  # the default zone is one that has v5e
  assert cmds[0] == (
    "gcloud compute tpus tpu-vm describe sslocr-tpu " + zone + " '--format=value(state)'"
  )
  assert cmds[1] == (
    "gcloud alpha compute tpus tpu-vm create sslocr-tpu "
    "--accelerator-type=v5litepod-8 --version=v2-alpha-tpuv5-lite --spot "
    "--autocheckpoint-enabled " + zone
  )
  assert cmds[2].startswith("tar -C ") and cmds[3].startswith("gcloud compute tpus tpu-vm scp")
  setup = cmds[4]
  assert "--worker=all" in setup
  assert "uv venv --python 3.11 $HOME/sslocr_venv" in setup
  assert "sys.version_info >= (3, 11)" in setup
  assert "pip install -q --python $HOME/sslocr_venv/bin/python -e '\\''.[tpu]'\\''" in setup
  train = cmds[6]
  assert (
    "nohup $HOME/sslocr_venv/bin/python -m sslocr_jax.main --config=configs/dig.py "
    "--workdir=gs://my-bucket/runs/dig-v5litepod-8 --config.distributed=True "
    "--config.total_steps=10 --config.note=a\\ b > "
  ) in train
  assert cmds[7].endswith(
    f"--worker=0 '--command=tail -n +1 -F $HOME/sslocr_logs/dig-v5litepod-8.log' {zone}"
  )
  assert len(cmds) == 8


@pytest.mark.parametrize(
  "state,expect",
  [
    ("READY", ["describe"]),
    ("PREEMPTED", ["describe", "delete", "create"]),
    ("NONE", ["describe", "create"]),
    ("CREATING", ["describe"]),
  ],
)
def test_tpu_vm_reuses_only_ready_vms(launcher, state, expect):
  out, rc = launcher("tpu_vm.sh", "--dry-run", "create", DRY_RUN_STATE=state)
  assert [re.search(r"tpu-vm (\w+)", c).group(1) for c in _commands(out)] == expect
  assert rc == (1 if state == "CREATING" else 0), out
  if state == "CREATING":
    assert "CREATING (not READY)" in out


def test_tpu_vm_several_workers_need_a_bucket(launcher):
  out, rc = launcher("tpu_vm.sh", "--dry-run", "train", DRY_RUN_WORKERS="4")
  assert rc == 1 and "4 workers need a shared workdir" in out


def test_gpu_dry_run_slurm_one_task_per_node_passes_every_gpu(launcher):
  out, rc = launcher(
    "gpu.sh",
    "--dry-run",
    "train",
    "--config.total_steps=5",
    GPUS="8",
    SLURM_NTASKS="4",
    SLURM_NTASKS_PER_NODE="1",
    SLURM_LOCALID="0",
    WORKDIR="gs://b/run",
  )
  assert rc == 0, out
  assert _commands(out) == [
    "export XLA_PYTHON_CLIENT_MEM_FRACTION=0.9",
    "export XLA_FLAGS=--xla_gpu_enable_latency_hiding_scheduler=true",
    "export JAX_LOCAL_DEVICE_IDS=0,1,2,3,4,5,6,7",
    "export SSLOCR_LOCAL_DEVICES=8",
    # no `mkdir -p gs://...`
    "python3 -m sslocr_jax.main --config=configs/dig.py --workdir=gs://b/run "
    "--config.distributed=True --config.total_steps=5",
  ]


def test_gpu_dry_run_one_process_per_gpu_and_multi_host(launcher):
  out, _ = launcher(
    "gpu.sh",
    "train",
    DRY_RUN="1",
    GPUS="8",
    SLURM_NTASKS="16",
    SLURM_NTASKS_PER_NODE="8(x2)",
    SLURM_LOCALID="3",
  )
  assert _commands(out)[2:4] == ["export JAX_LOCAL_DEVICE_IDS=3", "export SSLOCR_LOCAL_DEVICES=1"]
  out, _ = launcher(
    "gpu.sh",
    "train",
    DRY_RUN="1",
    NUM_HOSTS="2",
    HOST_ID="1",
    COORDINATOR="10.0.0.1:1234",
    CUDA_VISIBLE_DEVICES="2,3",
  )
  assert _commands(out)[2:] == [
    "export JAX_COORDINATOR_ADDRESS=10.0.0.1:1234",
    "export JAX_NUM_PROCESSES=2",
    "export JAX_PROCESS_ID=1",
    "export JAX_LOCAL_DEVICE_IDS=0,1",
    "export SSLOCR_LOCAL_DEVICES=2",
    "mkdir -p runs/dig-gpu",
    "python3 -m sslocr_jax.main --config=configs/dig.py --workdir=runs/dig-gpu "
    "--config.distributed=True",
  ]


def test_a_process_seeing_other_devices_than_asked_stops():
  # The test session has 8 fake CPU devices in one process.
  assert main_lib.check_local_devices(8) == "process 0 of 1: 8 local / 8 devices (cpu: cpu)"
  with pytest.raises(
    SystemExit,
    match=r"8 local / 8 devices .*asked for 1 per process.*"
    r"JAX_LOCAL_DEVICE_IDS=0,...,0",
  ):
    main_lib.check_local_devices(1)


def test_colab_install_cell_can_be_rerun(tmp_path, monkeypatch):
  """No placeholder URL; running the install cell twice installs once and stays in the
  checkout (a relative `%cd sslocr_jax` went into the package folder the second time)."""
  inputsplitter = pytest.importorskip("IPython.core.inputtransformer2")
  text = open(os.path.join(ROOT, "launch", "colab.ipynb")).read()
  assert "YOUR_" not in text and "REPO_URL" not in text
  cells = ["".join(c["source"]) for c in json.loads(text)["cells"] if c["cell_type"] == "code"]
  install = next(c for c in cells if "pip install" in c)
  source = tmp_path / "checkout"
  (source / "sslocr_jax").mkdir(parents=True)
  (source / "pyproject.toml").write_text("")
  repo_dir = tmp_path / "content" / "sslocr_jax"
  code = inputsplitter.TransformerManager().transform_cell(
    install.replace("/content/sslocr_jax", str(repo_dir))
  )
  ran = []

  class Shell:
    def system(self, cmd):
      ran.append((os.getcwd(), cmd.format(**ns)))

    def run_line_magic(self, name, arg):
      assert name == "cd"
      os.chdir(arg.format(**ns))

  monkeypatch.chdir(tmp_path)
  for _ in range(2):
    ns = {"SOURCE": str(source), "get_ipython": Shell}
    exec(code, ns)  # pylint: disable=exec-used
    assert os.getcwd() == str(repo_dir)
  assert [c for _, c in ran if "pip install" in c] == ['pip install -q -e ".[gpu]"'] * 2
  assert {d for d, _ in ran} == {str(repo_dir)}

"""Scale-out and fault tolerance: 8 fake devices, 2 real processes, SIGTERM, SIGKILL."""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import ROOT
from msjax import checkpoint, rules

pytestmark = pytest.mark.slow  # several processes and fake devices, tens of seconds


def _env(**extra):
  env = dict(os.environ)
  env.update(extra)
  return env


def test_sharded_step_equals_single_device_step():
  env = _env(XLA_FLAGS=os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8",
             PYTHONPATH=ROOT)
  r = subprocess.run([sys.executable, os.path.join(ROOT, "tests", "sharded_step_check.py")],
                     capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
  assert r.returncode == 0, r.stderr[-3000:]
  out = json.loads(r.stdout.strip().splitlines()[-1])
  assert out["n_devices"] == 8
  assert out["spec"] in ("P('data',)", "PartitionSpec('data',)")
  assert out["shard_shapes"] == [[2, 16, 16, 16, 5]]  # 16 patches over 8 devices
  assert out["params_sharding"] in ("P()", "PartitionSpec()")  # replicated
  # dropout on: the masks are a function of each element's global index, the same sharded
  assert out["rel_params"] < 1e-5, out
  assert abs(out["loss_single"] - out["loss_sharded"]) < 1e-5 * abs(out["loss_single"])
  assert abs(out["grad_norm_single"] - out["grad_norm_sharded"]) < 1e-5 * out["grad_norm_single"]
  # pinned: the batch split along data, state and metrics replicated
  short = lambda specs: [s.replace("PartitionSpec", "P") for s in specs]  # noqa: E731
  assert short(out["pinned"]["in_batch"]) == ["P('data',)"], out["pinned"]
  assert short(out["pinned"]["in_state"]) == short(out["pinned"]["out"]) == ["P()"], out["pinned"]
  # validation splits its patch batch over the devices instead of repeating it on each
  assert short([out["predict_in_spec"]]) == ["P('data',)"]
  assert out["predict_shape"] == [12, 16, 16, 16] and out["predict_rel"] < 1e-5, out


def _train_cmd(cohort, workdir, steps, *extra):
  return [sys.executable, "-m", "msjax.main", "--config", "configs/finetune.py:smoke",
          f"--config.data.cohort={cohort}", f"--config.train.steps={steps}",
          "--config.train.eval_every=0", "--config.train.log_every=1", "--workdir", str(workdir),
          *extra]


def _free_port():
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _two_processes(cohort, workdir, steps, *extra):
  port = _free_port()
  procs = [subprocess.Popen(
      _train_cmd(cohort, workdir, steps, "--config.distributed.mode=explicit",
                 f"--config.distributed.coordinator_address=127.0.0.1:{port}",
                 "--config.distributed.num_processes=2", f"--config.distributed.process_id={i}",
                 *extra),
      cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for i in range(2)]
  outs = [p.communicate(timeout=600)[0] for p in procs]
  for p, out in zip(procs, outs):
    assert p.returncode == 0, out[-3000:]
  return outs


def _params(workdir):
  params, meta, _ = checkpoint.restore_params(os.path.join(str(workdir), "checkpoints"))
  return rules.flat_paths(params), meta


def test_two_processes_checkpoint_restart_continue_identically(tiny_cohort, tmp_path):
  outs = _two_processes(tiny_cohort.root, tmp_path / "straight", 4,
                        "--config.train.checkpoint_every=2")
  assert "global batch 8 = 2 device(s)" in outs[0] and "2 process(es)" in outs[0]
  _two_processes(tiny_cohort.root, tmp_path / "restarted", 2,
                 "--config.train.checkpoint_every=2")
  outs = _two_processes(tiny_cohort.root, tmp_path / "restarted", 4,
                        "--config.train.checkpoint_every=2")
  assert "at step 2" in outs[0]
  a, meta = _params(tmp_path / "straight")
  b, _ = _params(tmp_path / "restarted")
  assert meta["step"] == 4
  for k in a:
    np.testing.assert_array_equal(a[k], b[k], err_msg=k)
  rows = [json.loads(x) for x in open(tmp_path / "restarted" / "metrics.jsonl")]
  assert [r["step"] for r in rows] == [1, 2, 3, 4]  # written by process 0 only, once


def _wait_for_lines(path, n, proc, timeout=300):
  t0 = time.time()
  while time.time() - t0 < timeout:
    if os.path.exists(path) and len(open(path).read().splitlines()) >= n:
      return
    assert proc.poll() is None, proc.stdout.read()[-3000:]
    time.sleep(0.2)
  raise TimeoutError(path)


def test_sigterm_saves_and_resumes(tiny_cohort, tmp_path):
  proc = subprocess.Popen(_train_cmd(tiny_cohort.root, tmp_path, 500,
                                     "--config.train.checkpoint_every=1000"),
                          cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  _wait_for_lines(tmp_path / "metrics.jsonl", 3, proc)
  proc.send_signal(signal.SIGTERM)
  out = proc.communicate(timeout=120)[0]
  # it exits as a SIGTERM'd process does (143), not going on as if training had finished
  assert proc.returncode == 143, out[-3000:]
  assert "SIGTERM received" in out and "run the same command again to resume" in out
  assert not (tmp_path / "bundle.json").exists()  # no model bundle of an unfinished training
  stopped = checkpoint.manager(str(tmp_path)).latest_step()
  assert stopped is not None and 3 <= stopped < 500
  r = subprocess.run(_train_cmd(tiny_cohort.root, tmp_path, stopped + 2), cwd=ROOT,
                     capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "resumed from" in r.stderr and f"at step {stopped}" in r.stderr
  rows = [json.loads(x) for x in open(tmp_path / "metrics.jsonl")]
  assert [r["step"] for r in rows] == list(range(1, stopped + 3))


def test_sigkill_during_saves_restarts_from_last_complete_checkpoint(tiny_cohort, tmp_path):
  # a checkpoint every step: a kill lands during or between saves
  proc = subprocess.Popen(_train_cmd(tiny_cohort.root, tmp_path, 500,
                                     "--config.train.checkpoint_every=1",
                                     "--config.train.keep_checkpoints=3"),
                          cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  _wait_for_lines(tmp_path / "metrics.jsonl", 4, proc)
  proc.send_signal(signal.SIGKILL)
  proc.communicate(timeout=60)
  ckpt = tmp_path / "checkpoints"
  # what a save torn by SIGKILL leaves behind: a temporary folder never renamed into place
  torn = ckpt / "99.orbax-checkpoint-tmp-1234567"
  (torn / "params").mkdir(parents=True)
  (torn / "params" / "partial").write_bytes(b"\0" * 100)
  complete = [int(d) for d in os.listdir(ckpt) if d.isdigit()]
  assert complete and 99 not in complete
  last = max(complete)
  r = subprocess.run(_train_cmd(tiny_cohort.root, tmp_path, last + 1), cwd=ROOT,
                     capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  assert f"at step {last}" in r.stderr
  assert not any("tmp" in d for d in os.listdir(ckpt)), os.listdir(ckpt)
  assert checkpoint.manager(str(tmp_path)).latest_step() == last + 1

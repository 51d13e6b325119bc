"""The benchmark mode runs and reports what it measured; the PyTorch reference is the same network."""
import json

import numpy as np
import pytest

from conftest import load_config
from msjax import benchmark, config_base
from msjax.models import isensee
from msjax.train import steps


def benchmark_uses_onednn():
  from msjax.ops import onednn
  return onednn.available()[0]


def test_benchmark_smoke_writes_every_figure(tmp_path):
  report = benchmark.run(load_config("benchmark", "smoke"), str(tmp_path))
  saved = json.load(open(tmp_path / "benchmark.json"))
  assert saved["matmul_peak_gflops"] > 0
  for name in ("train_seg", "train_pretrain", "infer"):
    r = saved["results"][name]
    assert r["patches_per_s"] > 0 and r["ms_per_step"] > 0 and r["compile_s"] > 0
    assert r["gflop_per_patch"] > 0 and 0 < r["fraction_of_matmul_peak"] < 5
    assert r["peak_memory_mb"] > 0
  assert saved["results"]["volume_infer"]["patches"] == 8  # 48³ by 32³ at overlap 0.5: 2 x 2 x 2
  assert "| train_seg |" in open(tmp_path / "benchmark.md").read()
  prof = saved["results"]["train_seg"]["profile"]  # op time by category, from a profiler trace
  assert prof["op_ms_per_step"] > 0 and prof["wall_ms_per_step"] > 0
  assert abs(sum(c["share"] for c in prof["categories"].values()) - 1) < 1e-6
  conv = "oneDNN convolution (custom call)" if saved["results"]["train_seg"]["conv_impl"] == \
      "onednn" and benchmark_uses_onednn() else "XLA convolution"
  assert prof["categories"].get(conv, {}).get("ms", 0) > 0
  assert (tmp_path / "profile_train_seg.png").stat().st_size > 5000
  if report["torch"]:  # when the bench extra is installed
    assert set(report["speedup_vs_torch"]) >= {"train_seg", "train_pretrain", "infer"}


def test_torch_reference_is_the_same_network():
  torch = pytest.importorskip("torch", reason="PyTorch reference needs the bench extra")
  from msjax import bench_torch
  for base in (4, 16):
    cfg = config_base.model(base_width=base)
    jax_params = steps.Model(isensee.constructor("segmentation", cfg)).init_params()
    n_jax = sum(int(np.prod(x.shape)) for x in __import__("jax").tree.leaves(jax_params))
    assert bench_torch.n_params(bench_torch.SegmentationNet(5, base)) == n_jax
    reg = steps.Model(isensee.constructor("position", cfg)).init_params()
    n_reg = sum(int(np.prod(x.shape)) for x in __import__("jax").tree.leaves(reg))
    assert bench_torch.n_params(bench_torch.PositionRegressor(5, base)) == n_reg
  out = bench_torch.SegmentationNet(5, 4)(torch.zeros(1, 5, 32, 32, 32))
  assert tuple(out.shape) == (1, 1, 32, 32, 32)

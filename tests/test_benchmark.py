"""The benchmark mode runs and reports what it measured; the PyTorch reference is the same network."""
import json

import numpy as np
import pytest

from conftest import load_config
from msjax import benchmark, config_base
from msjax.models import isensee
from msjax.models import model as model_lib


def benchmark_uses_onednn():
  from msjax.ops import onednn
  return onednn.available()[0]


@pytest.mark.slow  # compiles and times every step
def test_benchmark_smoke_writes_every_figure(tmp_path):
  report = benchmark.run(load_config("benchmark", "smoke"), str(tmp_path))
  saved = json.load(open(tmp_path / "benchmark.json"))
  assert saved["matmul_peak_gflops"] > 0
  assert saved["info"]["cpu"]["isa"] in ("amx", "avx512_bf16", "avx512", "avx2", "other")
  assert saved["info"]["auto_dtype"] in ("float32", "bfloat16")
  assert set(saved["results"]) == {"onednn/float32", "onednn/bfloat16"}
  for setting, res in saved["results"].items():
    assert set(res) == {"train_seg", "train_seg_3CF", "train_pretrain", "infer", "volume_infer"}
    for name in ("train_seg", "train_seg_3CF", "train_pretrain", "infer"):
      r = res[name]
      assert r["patches_per_s"] > 0 and r["ms_per_step"] > 0 and r["compile_s"] > 0
      assert r["ms_min"] <= r["ms_per_step"] <= r["ms_max"]
      assert r["gflop_per_patch"] > 0 and 0 < r["fraction_of_matmul_peak"] < 10
      assert r["peak_memory_mb"] > 0
    assert res["volume_infer"]["patches"] == 8  # 48³ by 32³ at overlap 0.5: 2 x 2 x 2
    prof = res["train_seg"]["profile"]  # op time by category, from a profiler trace
    assert prof["op_ms_per_step"] > 0 and prof["wall_ms_per_step"] > 0
    assert abs(sum(c["share"] for c in prof["categories"].values()) - 1) < 1e-6
    dtype = setting.split("/")[1]
    onednn_used = benchmark_uses_onednn() and (
        dtype == "float32" or __import__("msjax.ops.hardware").ops.hardware.native_bf16_cpu())
    conv = "oneDNN convolution (custom call)" if onednn_used else "XLA convolution"
    assert prof["categories"].get(conv, {}).get("ms", 0) > 0, (setting, prof["categories"])
    assert (tmp_path / f"profile_train_seg_{dtype}.png").stat().st_size > 5000
  md = open(tmp_path / "benchmark.md").read()
  assert "| train_seg | msjax onednn/bfloat16 |" in md
  assert "| train_seg_3CF | msjax onednn/float32 |" in md
  if report["torch"]:  # when the bench extra is installed
    assert set(report["torch"]["settings"]) == {"float32", "bf16"}
    assert set(report["headline"]) == {"train_seg", "train_pretrain", "infer", "volume_infer"}
    assert all(h["ratio"] > 0 for h in report["headline"].values())
    assert "| train_seg | PyTorch bf16 |" in md and "Headline" in md


def test_torch_reference_is_the_same_network():
  torch = pytest.importorskip("torch", reason="PyTorch reference needs the bench extra")
  from msjax import bench_torch
  for base in (4, 16):
    cfg = config_base.model(base_width=base)
    jax_params = model_lib.Model(isensee.constructor("segmentation", cfg)).init_params()
    n_jax = sum(int(np.prod(x.shape)) for x in __import__("jax").tree.leaves(jax_params))
    assert bench_torch.n_params(bench_torch.SegmentationNet(5, base)) == n_jax
    reg = model_lib.Model(isensee.constructor("position", cfg)).init_params()
    n_reg = sum(int(np.prod(x.shape)) for x in __import__("jax").tree.leaves(reg))
    assert bench_torch.n_params(bench_torch.PositionRegressor(5, base)) == n_reg
  out = bench_torch.SegmentationNet(5, 4)(torch.zeros(1, 5, 32, 32, 32))
  assert tuple(out.shape) == (1, 1, 32, 32, 32)

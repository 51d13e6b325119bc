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
  assert saved["info"]["transparent_huge_pages"] in ("always", "madvise", "never", "")
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
    dtype = setting.split("/")[1]
    onednn_used = benchmark_uses_onednn() and (
        dtype == "float32" or __import__("msjax.ops.hardware").ops.hardware.native_bf16_cpu())
    conv = "oneDNN convolution (custom call)" if onednn_used else "XLA convolution"
    for name in ("train_seg", "train_pretrain", "infer"):
      prof = res[name]["profile"]  # op time by category, from a profiler trace
      assert prof["op_ms_per_step"] > 0 and prof["wall_ms_per_step"] > 0
      assert abs(sum(c["share"] for c in prof["categories"].values()) - 1) < 1e-6
      assert prof["categories"].get(conv, {}).get("ms", 0) > 0, (setting, name,
                                                                prof["categories"])
      if benchmark_uses_onednn():  # the norms' own kernels, told apart from the convolutions
        norms = "instance norm + leaky ReLU (msjax CPU kernels)"
        assert prof["categories"].get(norms, {}).get("ms", 0) > 0, (setting, name)
      assert (tmp_path / f"profile_{name}_{dtype}.png").stat().st_size > 5000
  md = open(tmp_path / "benchmark.md").read()
  assert "| train_seg | msjax onednn/bfloat16 |" in md
  assert "| train_seg_3CF | msjax onednn/float32 |" in md
  if report["torch"]:  # when the bench extra is installed
    assert set(report["torch"]["settings"]) == {"float32", "bf16"}
    assert set(report["headline"]) == {"train_seg", "train_pretrain", "infer", "volume_infer"}
    assert all(h["ratio"] > 0 for h in report["headline"].values())
    assert "| train_seg | PyTorch bf16 |" in md and "Headline" in md
    for name in ("train_seg", "train_pretrain", "infer"):  # paired rounds, both sides warm
      h = report["headline"][name]
      assert len(h["ratios"]) == 2 and min(h["ratios"]) <= h["ratio"] <= max(h["ratios"])
      assert all(r["msjax"] > 0 and r["pytorch"] > 0 for r in h["rounds"])
    assert "median of 2 paired rounds" in md and "timed apart" in md


def _torch_and_msjax_outputs(task, base, patch, change=None):
  """Both networks with msjax's parameters on one random input: (msjax output, PyTorch output),
  in msjax's layout. change(torch_net) alters the PyTorch side after the copy."""
  import jax
  torch = pytest.importorskip("torch", reason="PyTorch reference needs the bench extra")
  from msjax import bench_torch, rules
  model = model_lib.Model(isensee.constructor(
      task, config_base.model(base_width=base, conv_impl="xla", dtype="float32")))
  params = model.init_params()
  rng = np.random.default_rng(0)
  if task == "position":  # a random head, not the zero one the encoder's output would not reach
    params["head"] = jax.tree.map(lambda p: rng.standard_normal(p.shape).astype(np.float32),
                                  params["head"])
  x = rng.standard_normal((2, patch, patch, patch, 5)).astype(np.float32)
  ours = np.asarray(jax.jit(model.apply)(params, x))
  net = (bench_torch.SegmentationNet if task == "segmentation" else
         bench_torch.PositionRegressor)(5, base).eval()
  bench_torch.load_msjax_params(net, rules.flat_paths(params))
  if change:
    change(net)
  with torch.no_grad():
    theirs = net(torch.from_numpy(x.transpose(0, 4, 1, 2, 3).copy())).numpy()
  return ours, theirs.transpose(0, 2, 3, 4, 1) if theirs.ndim == 5 else theirs


def _rel(a, b):
  return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("task", ["segmentation", "position"])
def test_torch_reference_is_the_same_function(task):
  """msjax's parameters copied into the PyTorch network (every parameter of each side used once,
  shapes checked): the same outputs on the same input, float32, 32³ (a 2³ bottleneck)."""
  ours, theirs = _torch_and_msjax_outputs(task, 4, 32)
  assert ours.shape == theirs.shape
  assert _rel(theirs, ours) < 1e-4, _rel(theirs, ours)
  # the comparison sees one layer changed: one LeakyReLU of level 3 made a ReLU
  from torch import nn

  def relu(net):
    net.encoder.levels[2].ctx[1] = nn.ReLU()
  _, changed = _torch_and_msjax_outputs(task, 4, 32, relu)
  assert _rel(changed, ours) > 1e-3, _rel(changed, ours)


def test_torch_reference_refuses_parameters_that_do_not_fit():
  torch = pytest.importorskip("torch", reason="PyTorch reference needs the bench extra")
  from msjax import bench_torch, rules
  params = rules.flat_paths(model_lib.Model(isensee.constructor(
      "segmentation", config_base.model(base_width=4))).init_params())
  net = bench_torch.SegmentationNet(5, 4)
  with pytest.raises(ValueError, match="no PyTorch place.*encoder/extra/kernel"):
    bench_torch.load_msjax_params(net, dict(params, **{"encoder/extra/kernel": np.zeros(3)}))
  net.encoder.levels[1].ctx[2] = torch.nn.Conv3d(8, 8, 1)  # a 3³ conv made 1³
  with pytest.raises(ValueError, match=r"encoder.levels.1.ctx.2.weight"):
    bench_torch.load_msjax_params(net, params)


def test_emulated_bf16_is_skipped_only_on_cpus_without_bf16(monkeypatch):
  from msjax.ops import hardware
  names = ["float32", "bf16", "bf16_cl3d"]
  monkeypatch.setattr(hardware, "native_bf16_cpu", lambda: False)
  assert benchmark.without_emulated_bf16(names, "PyTorch") == ["float32"]
  assert benchmark.without_emulated_bf16(["float32", "bfloat16"], "msjax") == ["float32"]
  assert benchmark.without_emulated_bf16(names, "PyTorch", keep=True) == names
  monkeypatch.setattr(hardware, "native_bf16_cpu", lambda: True)
  assert benchmark.without_emulated_bf16(names, "PyTorch") == names


def test_paired_rounds_alternate_the_sides_and_take_the_median_ratio(monkeypatch):
  """The headline's rounds time msjax's fastest setting and PyTorch's fastest back to back, which
  goes first alternating, PyTorch in a fresh process each round, and report the median of the
  per-round ratios."""
  from ml_collections import config_dict
  config = config_dict.ConfigDict(dict(warmup=1, repeats=3, paired_rounds=3))
  results = {"onednn/float32": {"train_seg": {"patches_per_s": 10.0}},
             "onednn/bfloat16": {"train_seg": {"patches_per_s": 20.0}}}
  torch_settings = {"float32": {"train_seg": {"patches_per_s": 5.0}},
                    "bf16": {"train_seg": {"patches_per_s": 8.0}}}
  calls, msjax_seconds = [], iter([0.010, 0.020, 0.005])  # one per round

  def fake_timed(fn, warmup, repeats):  # msjax's side: the step its fastest setting compiled
    fn()
    return [next(msjax_seconds)] * repeats
  monkeypatch.setattr(benchmark.profiler, "timed", fake_timed)
  runners = {"onednn/bfloat16": {"train_seg": {"run": lambda: calls.append("msjax")}},
             "onednn/float32": {"train_seg": {"run": lambda: calls.append("msjax f32")}}}

  class FakeTorch:
    def __init__(self):
      calls.append("open")

    def __call__(self, setting, name, warmup, repeats):
      calls.append(f"pytorch {setting} {repeats}")
      return [0.030] * repeats

    def close(self):
      calls.append("close")
  paired = benchmark.paired_rounds(config, results, torch_settings, runners, "onednn", FakeTorch)
  warm = ["open", "pytorch bf16 0"]  # a fresh PyTorch process, its networks built, untimed
  assert calls == (warm + ["msjax", "pytorch bf16 3", "close"]
                   + warm + ["pytorch bf16 3", "msjax", "close"]
                   + warm + ["msjax", "pytorch bf16 3", "close"])
  h = paired["train_seg"]
  assert (h["msjax"], h["pytorch"]) == ("onednn/bfloat16", "bf16")
  assert np.allclose(h["ratios"], [3.0, 1.5, 6.0]) and h["ratio"] == pytest.approx(3.0)
  assert set(paired) == {"train_seg"}  # nothing to pair for the functions not measured

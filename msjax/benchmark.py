"""`benchmark` mode: compiled patch throughput of the segmentation train step, the pretraining step
and inference, beside a PyTorch implementation of the same network timed in the same run.

Per function: ahead-of-time compile time (`lower().compile()`), steady-state ms per step (warm-up,
then repeats: median and spread), patches/s, peak device memory (compiled memory analysis), FLOPs
per patch (XLA cost analysis) and achieved FLOP/s as a fraction of a matmul peak measured in the
same run on the same device. Also the whole-volume inference time of one exam with the sliding
window. Writes `benchmark.json` and `benchmark.md` in the workdir. Device auto-detected.
"""
from __future__ import annotations

import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from msjax import config_base, files
from msjax.infer import sliding_window
from msjax.models import isensee
from msjax.train import optim, steps


def matmul_peak(n: int = 2048, repeats: int = 5) -> float:
  """FLOP/s of a large float32 matmul on the default device: the achievable ceiling."""
  a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), jnp.float32)
  f = jax.jit(lambda x, y: x @ y)
  f(a, a).block_until_ready()
  ts = []
  for _ in range(repeats):
    t = time.perf_counter()
    f(a, a).block_until_ready()
    ts.append(time.perf_counter() - t)
  return 2 * n ** 3 / float(np.median(ts))


def _stats(times, patches, flops_per_step, peak) -> dict:
  med = float(np.median(times))
  return {"ms_per_step": 1e3 * med, "ms_min": 1e3 * float(np.min(times)),
          "ms_max": 1e3 * float(np.max(times)), "repeats": len(times),
          "patches_per_s": patches / med,
          "gflop_per_patch": flops_per_step / patches / 1e9 if flops_per_step else None,
          "achieved_gflops": flops_per_step / med / 1e9 if flops_per_step else None,
          "fraction_of_matmul_peak": flops_per_step / med / peak if flops_per_step else None}


def _compiled_info(compiled) -> dict:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  mem = compiled.memory_analysis()
  peak_bytes = None
  if mem is not None:
    peak_bytes = getattr(mem, "peak_memory_in_bytes", 0) or (
        mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes
        - mem.alias_size_in_bytes)
  return {"flops": float(cost.get("flops", 0.0)) if cost else 0.0,
          "peak_memory_mb": peak_bytes / 2 ** 20 if peak_bytes else None}


def _lowered_flops(lowered) -> float:
  cost = lowered.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get("flops", 0.0)) if cost else 0.0


def _reference_flops(build, model_cfg) -> float | None:
  """FLOPs of the same computation with XLA's own convolution: XLA cannot see inside custom calls
  (oneDNN), so their cost analysis would count only the glue around the convolutions."""
  if model_cfg.conv_impl != "onednn":
    return None
  ref = config_base.model(**dict(model_cfg.to_dict(), conv_impl="xla"))
  return _lowered_flops(build(ref))


def _step_and_data(task: str, model_cfg, train_cfg, batch: int, patch: int):
  model = steps.Model(isensee.constructor(task, model_cfg))
  params = model.init_params()
  labels, _ = optim.freeze_labels(params, 0, log=False)
  tx = optim.make_optimizer(train_cfg, labels)
  state = steps.init_state(params, tx)
  rng = np.random.default_rng(0)
  data = {"image": jnp.asarray(rng.standard_normal((batch, patch, patch, patch, 5)), jnp.float32)}
  if task == "segmentation":
    data["mask"] = jnp.asarray(rng.random((batch, patch, patch, patch, 1)) > 0.95, jnp.float32)
  else:
    data["position"] = jnp.asarray(rng.random((batch, 3)), jnp.float32)
  return steps.make_train_step(model, task, tx, labels), state, data


# HLO op name -> what it is, for the profile (first match wins)
_CATEGORIES = (("reduce", "reductions (norm statistics, loss, grad sums)"),
               ("ffi_call", "oneDNN convolution (custom call)"),
               ("custom-call", "oneDNN convolution (custom call)"),
               ("convolution", "XLA convolution"), ("dot", "matmul (1³ convs, dense)"),
               ("fusion", "elementwise fusions (norm, leaky ReLU, dropout, Adam)"),
               ("copy", "copies / transposes"), ("transpose", "copies / transposes"),
               ("pad", "copies / transposes"), ("concatenate", "copies / transposes"),
               ("slice", "copies / transposes"))


def _category(op: str) -> str:
  op = op.lower()
  for key, name in _CATEGORIES:
    if key in op:
      return name
  return "other"


def profile_step(run_once, repeats: int, trace_dir: str) -> dict:
  """Milliseconds per step by op category, from a JAX profiler trace of `repeats` steps: the op
  events XLA's CPU runtime records (one per HLO instruction executed). Ops can overlap in time
  (XLA runs independent ones concurrently), so shares are of the summed op time."""
  import glob
  import gzip
  run_once()
  t = time.perf_counter()
  with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
    for _ in range(repeats):
      run_once()
  wall = (time.perf_counter() - t) / repeats
  traces = sorted(glob.glob(os.path.join(trace_dir, "**", "perfetto_trace.json.gz"),
                            recursive=True))
  if not traces:
    return {}
  events = json.load(gzip.open(traces[-1]))
  events = events["traceEvents"] if isinstance(events, dict) else events
  per_cat: dict[str, float] = {}
  for e in events:
    name = e.get("name", "")
    if e.get("ph") != "X" or name.startswith("$") or "::" in name or "(" in name:
      continue  # python frames and runtime wrappers, not ops
    cat = _category(name)
    per_cat[cat] = per_cat.get(cat, 0.0) + e.get("dur", 0.0) / 1e3 / repeats
  total = sum(per_cat.values())
  return {"wall_ms_per_step": 1e3 * wall, "op_ms_per_step": total,
          "categories": {k: {"ms": v, "share": v / total if total else 0.0}
                         for k, v in sorted(per_cat.items(), key=lambda kv: -kv[1])}}


def profile_figure(profile: dict, title: str, path: str) -> str:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  from msjax.train import plots
  cats = list(profile["categories"].items())[::-1]
  fig, ax = plt.subplots(figsize=(8, 0.45 * len(cats) + 1.2))
  bars = ax.barh([k for k, _ in cats], [v["ms"] for _, v in cats], color="tab:blue")
  ax.bar_label(bars, [f"{v['ms']:.0f} ms ({100 * v['share']:.0f} %)" for _, v in cats],
               fontsize=8, padding=3)
  ax.set_xlabel("ms per step (summed op time)")
  ax.set_title(title, fontsize=10)
  ax.set_xlim(0, max(v["ms"] for _, v in cats) * 1.35)
  return plots.save_figure(fig, path)


def bench_jax_step(task: str, model_cfg, train_cfg, batch: int, patch: int, warmup: int,
                   repeats: int, peak: float, profile_dir: str | None = None) -> dict:
  key = jax.random.PRNGKey(0)
  step, state, data = _step_and_data(task, model_cfg, train_cfg, batch, patch)
  t = time.perf_counter()
  compiled = step.lower(state, data, key).compile()
  compile_s = time.perf_counter() - t
  info = _compiled_info(compiled)

  def build(cfg):
    s_, st_, d_ = _step_and_data(task, cfg, train_cfg, batch, patch)
    return s_.lower(st_, d_, key)
  info["flops"] = _reference_flops(build, model_cfg) or info["flops"]
  times = []
  for i in range(warmup + repeats):
    t = time.perf_counter()
    state, m = compiled(state, data, key)
    jax.block_until_ready(m["loss"])
    if i >= warmup:
      times.append(time.perf_counter() - t)
  out = {"compile_s": compile_s, **info, **_stats(times, batch, info["flops"], peak)}
  if profile_dir:
    def run_once():  # the step donates its state: thread it through
      nonlocal state
      state, m = compiled(state, data, key)
      jax.block_until_ready(m["loss"])
    out["profile"] = profile_step(run_once, max(repeats, 1), profile_dir)
  return out


def bench_jax_infer(model_cfg, batch: int, patch: int, warmup: int, repeats: int, peak: float,
                    volume_shape=None, overlap: float = 0.5) -> tuple[dict, dict | None]:
  model = steps.Model(isensee.constructor("segmentation", model_cfg))
  params = model.init_params()
  x = jnp.asarray(np.random.default_rng(0).standard_normal((batch, patch, patch, patch, 5)),
                  jnp.float32)
  predict = steps.make_predict(model, "segmentation")
  t = time.perf_counter()
  compiled = predict.lower(params, x).compile()
  compile_s = time.perf_counter() - t
  info = _compiled_info(compiled)

  def build(cfg):
    m = steps.Model(isensee.constructor("segmentation", cfg))
    return steps.make_predict(m, "segmentation").lower(m.init_params(), x)
  info["flops"] = _reference_flops(build, model_cfg) or info["flops"]
  times = []
  for i in range(warmup + repeats):
    t = time.perf_counter()
    compiled(params, x).block_until_ready()
    if i >= warmup:
      times.append(time.perf_counter() - t)
  out = {"compile_s": compile_s, **info, **_stats(times, batch, info["flops"], peak)}
  volume = None
  if volume_shape:
    volume = bench_volume(lambda b: compiled(params, b), volume_shape, patch, batch, overlap)
  return out, volume


def bench_volume(predict_batch, shape, patch, batch, overlap) -> dict:
  images = np.random.default_rng(1).standard_normal(tuple(shape) + (5,)).astype(np.float32)
  corners = sliding_window.sliding_window_corners(shape, patch, overlap)
  t = time.perf_counter()
  sliding_window.predict_volume(predict_batch, images, corners, patch, batch)
  seconds = time.perf_counter() - t
  return {"seconds": seconds, "patches": len(corners), "shape": list(shape), "overlap": overlap,
          "patches_per_s": len(corners) / seconds}


def bench_torch(cfg, batch: int, patch: int, warmup: int, repeats: int, volume_shape=None,
                overlap: float = 0.5) -> dict:
  import torch
  from msjax import bench_torch as bt
  torch.manual_seed(0)
  torch.set_num_threads(os.cpu_count() or 1)
  out = {"version": torch.__version__, "threads": torch.get_num_threads()}
  x = torch.randn(batch, 5, patch, patch, patch)
  for name, net, target, loss_fn in (
      ("train_seg", bt.SegmentationNet(5, cfg.base_width, cfg.dropout),
       (torch.rand(batch, 1, patch, patch, patch) > 0.95).float(), bt.soft_dice_loss),
      ("train_pretrain", bt.PositionRegressor(5, cfg.base_width, cfg.dropout),
       torch.rand(batch, 3), torch.nn.functional.mse_loss)):
    opt = torch.optim.Adam(net.parameters(), lr=5e-4, weight_decay=1e-5)
    net.train()
    times = []
    for i in range(warmup + repeats):
      t = time.perf_counter()
      opt.zero_grad(set_to_none=True)
      loss = loss_fn(net(x), target)
      loss.backward()
      opt.step()
      if i >= warmup:
        times.append(time.perf_counter() - t)
    out[name] = {"params": bt.n_params(net), **_stats(times, batch, 0, 1.0)}
    if name == "train_seg":
      seg = net
  seg.eval()
  times = []
  with torch.inference_mode():
    for i in range(warmup + repeats):
      t = time.perf_counter()
      torch.sigmoid(seg(x))
      if i >= warmup:
        times.append(time.perf_counter() - t)
    out["infer"] = _stats(times, batch, 0, 1.0)
    if volume_shape:
      def predict_batch(b):
        t_in = torch.from_numpy(np.ascontiguousarray(b.transpose(0, 4, 1, 2, 3)))
        return torch.sigmoid(seg(t_in))[:, 0].numpy()
      out["volume_infer"] = bench_volume(predict_batch, volume_shape, patch, batch, overlap)
  return out


def run(config, workdir: str) -> dict:
  device = jax.devices()[0]
  info = {"backend": jax.default_backend(), "device": device.device_kind,
          "n_devices": jax.device_count(), "host": platform.processor() or platform.machine(),
          "cpu_count": os.cpu_count(), "jax": jax.__version__,
          "xla_flags": os.environ.get("XLA_FLAGS", "")}
  peak = matmul_peak(config.matmul_size)
  logging.info("device %s (%s); float32 matmul peak %.1f GFLOP/s", info["device"],
               info["backend"], peak / 1e9)
  b, p = config.batch_size, config.patch_size
  results = {}
  impls = [s.strip() for s in config.conv_impls.split(",") if s.strip()]
  volume_shape = tuple(config.volume_shape) if config.volume else None
  for k, impl in enumerate(impls):
    mc = config_base.model(base_width=config.base_width, conv_impl=impl, dtype=config.dtype)
    tc = config_base.train()
    suffix = "" if k == 0 else f"@{impl}"
    logging.info("[benchmark] %s: train_seg", impl)
    results["train_seg" + suffix] = bench_jax_step(
        "segmentation", mc, tc, b, p, config.warmup, config.repeats, peak,
        os.path.join(workdir, "trace") if config.profile and k == 0 else None)
    prof = results["train_seg" + suffix].get("profile")
    if prof:
      results["train_seg" + suffix]["profile_png"] = profile_figure(
          prof, f"train_seg ({impl}, width {config.base_width}, {b}×{p}³): where a step's time "
          "goes", os.path.join(workdir, "profile_train_seg.png"))
    logging.info("[benchmark] %s: train_pretrain", impl)
    results["train_pretrain" + suffix] = bench_jax_step("position", mc, tc, b, p, config.warmup,
                                                        config.repeats, peak)
    logging.info("[benchmark] %s: infer", impl)
    results["infer" + suffix], volume = bench_jax_infer(
        mc, config.infer_batch, p, config.warmup, config.repeats, peak,
        volume_shape if k == 0 else None, config.overlap)
    if volume:
      results["volume_infer"] = volume
    for name in ("train_seg", "train_pretrain", "infer"):
      results[name + suffix]["conv_impl"] = impl
  torch_results = None
  if config.torch:
    try:
      logging.info("[benchmark] PyTorch reference")
      torch_results = bench_torch(config_base.model(base_width=config.base_width), b, p,
                                  config.warmup, config.repeats, volume_shape, config.overlap)
    except ImportError:
      logging.warning("PyTorch is not installed (pip install -e '.[bench]'): no reference column")
  report = {"info": info, "matmul_peak_gflops": peak / 1e9,
            "config": json.loads(config.to_json_best_effort()), "results": results,
            "torch": torch_results}
  if torch_results:
    report["speedup_vs_torch"] = {  # patches/s ratios: fair when the batch sizes differ
        k: results[k]["patches_per_s"] / torch_results[k]["patches_per_s"]
        for k in ("train_seg", "train_pretrain", "infer")}
    if "volume_infer" in torch_results and "volume_infer" in results:
      report["speedup_vs_torch"]["volume_infer"] = (torch_results["volume_infer"]["seconds"]
                                                    / results["volume_infer"]["seconds"])
  table = format_table(report)
  prof = results["train_seg"].get("profile")
  if prof:
    table += "\n\nProfile of train_seg (" + results["train_seg"]["conv_impl"] + \
        f"), {prof['wall_ms_per_step']:.0f} ms/step wall:\n" + "\n".join(
            f"  {k}: {v['ms']:.0f} ms ({100 * v['share']:.0f} % of op time)"
            for k, v in prof["categories"].items())
  files.write_json(report, os.path.join(workdir, "benchmark.json"))
  files.write_text(table + "\n", os.path.join(workdir, "benchmark.md"))
  print(table)
  print(f"[benchmark] {os.path.join(workdir, 'benchmark.json')}")
  return report


def format_table(report) -> str:
  info, res, tr = report["info"], report["results"], report.get("torch") or {}
  cfg = report["config"]
  lines = [f"msjax benchmark on {info['device']} ({info['backend']}, {info['cpu_count']} CPUs), "
           f"jax {info['jax']}; base width {cfg['base_width']}, {cfg['patch_size']}³ patches, "
           f"batch {cfg['batch_size']} (inference batch {cfg['infer_batch']}), {cfg['dtype']}; "
           f"float32 matmul peak {report['matmul_peak_gflops']:.0f} GFLOP/s", "",
           "| function | conv | compile s | ms/step (min-max) | patches/s | GFLOP/patch | "
           "% of matmul peak | peak MB | PyTorch patches/s | msjax / PyTorch |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
  for name, r in res.items():
    if name == "volume_infer":
      continue
    base = name.split("@")[0]
    t = tr.get(base)
    ratio = r["patches_per_s"] / t["patches_per_s"] if t else None
    lines.append(
        f"| {base} | {r['conv_impl']} | {r['compile_s']:.1f} | {r['ms_per_step']:.0f} "
        f"({r['ms_min']:.0f}-{r['ms_max']:.0f}) | {r['patches_per_s']:.2f} | "
        f"{(r['gflop_per_patch'] or 0):.2f} | {100 * (r['fraction_of_matmul_peak'] or 0):.1f} | "
        f"{(r['peak_memory_mb'] or 0):.0f} | " + (f"{t['patches_per_s']:.2f} | {ratio:.2f}x |"
                                                 if t else "- | - |"))
  v = res.get("volume_infer")
  if v:
    tv = tr.get("volume_infer")
    lines.append("")
    lines.append(f"Whole-volume inference, {'x'.join(map(str, v['shape']))} exam, sliding window "
                 f"overlap {v['overlap']} ({v['patches']} patches): msjax {v['seconds']:.1f} s"
                 + (f", PyTorch {tv['seconds']:.1f} s ({tv['seconds'] / v['seconds']:.2f}x)"
                    if tv else ""))
  return "\n".join(lines)

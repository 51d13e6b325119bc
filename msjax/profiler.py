"""Where a compiled step's time goes: a JAX profiler trace of a few steps, summed by op category
(oneDNN convolutions, elementwise fusions, reductions, copies...), and its bar chart."""
from __future__ import annotations

import glob
import gzip
import json
import os
import re
import time

import jax

# HLO op name -> what it is (first match wins)
_CATEGORIES = (("reduce", "reductions (norm statistics and gradients, loss)"),
               ("ffi_call", "oneDNN convolution (custom call)"),
               ("custom-call", "oneDNN convolution (custom call)"),
               ("convolution", "XLA convolution"), ("dot", "matmul (1³ convs, dense)"),
               ("fusion", "elementwise fusions (norm apply, leaky ReLU, dropout, Adam)"),
               ("copy", "copies / transposes"), ("transpose", "copies / transposes"),
               ("pad", "copies / transposes"), ("concatenate", "copies / transposes"),
               ("slice", "copies / transposes"))


def timed(fn, warmup: int, repeats: int) -> list[float]:
  """Wall seconds of `repeats` calls of fn after `warmup` untimed ones (fn must block until its
  work is done); shared by the JAX and PyTorch sides of the benchmark so both time alike."""
  times = []
  for i in range(warmup + repeats):
    t = time.perf_counter()
    fn()
    if i >= warmup:
      times.append(time.perf_counter() - t)
  return times


# custom-call target (substring) -> what it is; trace events name only the instruction
_TARGETS = (("MsjaxNorm", "instance norm + leaky ReLU (msjax CPU kernels)"),
            ("MsjaxConv", "oneDNN convolution (custom call)"))


def custom_call_targets(hlo_text: str) -> dict[str, str]:
  """Instruction name -> custom-call target, from a compiled module's HLO text."""
  return dict(re.findall(r'%?([\w.\-]+) = [^\n]*?custom_call_target="([^"]+)"', hlo_text))


def category(op: str, targets: dict | None = None) -> str:
  target = (targets or {}).get(op)
  if target:
    for key, name in _TARGETS:
      if key in target:
        return name
  op = op.lower()
  for key, name in _CATEGORIES:
    if key in op:
      return name
  return "other"


def profile_step(run_once, repeats: int, trace_dir: str, hlo_text: str = "") -> dict:
  """Milliseconds per step by op category, from a JAX profiler trace of `repeats` steps: the op
  events XLA's CPU runtime records (one per HLO instruction executed; `hlo_text`, the compiled
  module's, tells which custom calls are convolutions and which norms). Ops can overlap in time
  (XLA runs independent ones concurrently), so shares are of the summed op time."""
  targets = custom_call_targets(hlo_text)
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
  with gzip.open(traces[-1]) as f:
    events = json.load(f)
  events = events["traceEvents"] if isinstance(events, dict) else events
  per_cat: dict[str, float] = {}
  for e in events:
    name = e.get("name", "")
    if e.get("ph") != "X" or name.startswith("$") or "::" in name or "(" in name:
      continue  # python frames and runtime wrappers, not ops
    cat = category(name, targets)
    per_cat[cat] = per_cat.get(cat, 0.0) + e.get("dur", 0.0) / 1e3 / repeats
  total = sum(per_cat.values())
  return {"wall_ms_per_step": 1e3 * wall, "op_ms_per_step": total,
          "categories": {k: {"ms": v, "share": v / total if total else 0.0}
                         for k, v in sorted(per_cat.items(), key=lambda kv: -kv[1])}}


def profile_figure(profile: dict, title: str, path: str) -> str:
  import matplotlib.pyplot as plt

  from msjax import figures
  cats = list(profile["categories"].items())[::-1]
  fig, ax = plt.subplots(figsize=(8, 0.45 * len(cats) + 1.2))
  bars = ax.barh([k for k, _ in cats], [v["ms"] for _, v in cats], color="tab:blue")
  ax.bar_label(bars, [f"{v['ms']:.0f} ms ({100 * v['share']:.0f} %)" for _, v in cats],
               fontsize=8, padding=3)
  ax.set_xlabel("ms per step (summed op time)")
  ax.set_title(title, fontsize=10)
  ax.set_xlim(0, max(v["ms"] for _, v in cats) * 1.35)
  return figures.save_figure(fig, path)

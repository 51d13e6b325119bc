"""`benchmark` mode: compiled patch throughput of the segmentation train step, the pretraining step
and inference, in float32 and bfloat16, beside the same network in PyTorch timed in the same run
in float32 and in its fastest CPU setting (bf16 autocast, channels-first and channels_last_3d).

Per function and setting: ahead-of-time compile time (`lower().compile()`), steady-state ms per
step (warm-up, then repeats: median, min and max), patches/s, peak device memory (compiled memory
analysis), FLOPs per patch (XLA cost analysis) and achieved FLOP/s as a fraction of a float32
matmul peak measured in the same run. Also whole-volume inference of one exam with the sliding
window, and an op-category profile of each function per dtype (PNG). The headline ratio is
msjax's fastest setting over PyTorch's fastest, per function, measured again in paired rounds
that time the two back to back (`paired_rounds`). `benchmark.json` records the CPU's
ISA (avx2, avx512, avx512_bf16, amx) and the dtype `model.dtype="auto"` picks on it.
"""
from __future__ import annotations

import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from msjax import config_base, files, profiler
from msjax.infer import sliding_window
from msjax.models import isensee
from msjax.models import model as model_lib
from msjax.ops import hardware
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


def _stats(times, patches, flops_per_step=0.0, peak=1.0) -> dict:
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


def _step_and_data(task: str, model_cfg, train_cfg, batch: int, patch: int, n_frozen: int = 0):
  """The jitted training step of `task` with the first n_frozen convs frozen (the fine-tuning
  strategy nCF; 0 = VAN/0CF), its state and one random batch."""
  model = model_lib.Model(isensee.constructor(task, model_cfg))
  params = model.init_params()
  labels, _ = optim.freeze_labels(params, n_frozen, log=False)
  tx = optim.make_optimizer(train_cfg)
  state = steps.init_state(params, tx, labels)
  rng = np.random.default_rng(0)
  data = {"image": jnp.asarray(rng.standard_normal((batch, patch, patch, patch, 5)), jnp.float32)}
  if task == "segmentation":
    data["mask"] = jnp.asarray(rng.random((batch, patch, patch, patch, 1)) > 0.95, jnp.float32)
  else:
    data["position"] = jnp.asarray(rng.random((batch, 3)), jnp.float32)
  return steps.make_train_step(model, task, tx, labels), state, data

# the functions whose headline setting gets an op-category profile (config.profile)
PROFILED = ("train_seg", "train_pretrain", "infer")


def bench_jax_step(task: str, model_cfg, train_cfg, batch: int, patch: int, warmup: int,
                   repeats: int, peak: float, profile_dir: str | None = None,
                   n_frozen: int = 0, keep: dict | None = None) -> dict:
  """One training step's figures; keep["run"] = the compiled step (for the paired rounds)."""
  key = jax.random.PRNGKey(0)
  step, state, data = _step_and_data(task, model_cfg, train_cfg, batch, patch, n_frozen)
  t = time.perf_counter()
  compiled = step.lower(state, data, key).compile()
  compile_s = time.perf_counter() - t
  info = _compiled_info(compiled)

  def build(cfg):
    s_, st_, d_ = _step_and_data(task, cfg, train_cfg, batch, patch, n_frozen)
    return s_.lower(st_, d_, key)
  info["flops"] = _reference_flops(build, model_cfg) or info["flops"]

  def run_once():  # the step donates its state: thread it through
    nonlocal state
    state, m = compiled(state, data, key)
    jax.block_until_ready(m["loss"])
  times = profiler.timed(run_once, warmup, repeats)
  out = {"compile_s": compile_s, **info, **_stats(times, batch, info["flops"], peak)}
  if profile_dir:
    out["profile"] = profiler.profile_step(run_once, max(repeats, 1), profile_dir,
                                           compiled.as_text())
  if keep is not None:
    keep["run"] = run_once
  return out


def bench_jax_infer(model_cfg, batch: int, patch: int, warmup: int, repeats: int, peak: float,
                    volume_shape=None, overlap: float = 0.5, profile_dir: str | None = None,
                    keep: dict | None = None) -> tuple[dict, dict | None]:
  model = model_lib.Model(isensee.constructor("segmentation", model_cfg))
  params = model.init_params()
  x = jnp.asarray(np.random.default_rng(0).standard_normal((batch, patch, patch, patch, 5)),
                  jnp.float32)
  predict = model_lib.make_predict(model, "segmentation")
  t = time.perf_counter()
  compiled = predict.lower(params, x).compile()
  compile_s = time.perf_counter() - t
  info = _compiled_info(compiled)

  def build(cfg):
    m = model_lib.Model(isensee.constructor("segmentation", cfg))
    return model_lib.make_predict(m, "segmentation").lower(m.init_params(), x)
  info["flops"] = _reference_flops(build, model_cfg) or info["flops"]
  def run_once():
    compiled(params, x).block_until_ready()
  if keep is not None:
    keep["run"] = run_once
  times = profiler.timed(run_once, warmup, repeats)
  out = {"compile_s": compile_s, **info, **_stats(times, batch, info["flops"], peak)}
  if profile_dir:
    out["profile"] = profiler.profile_step(run_once, max(repeats, 1), profile_dir,
                                           compiled.as_text())
  volume = None
  if volume_shape:
    volume = bench_volume(lambda b: compiled(params, b), volume_shape, patch, batch, overlap)
  return out, volume


def bench_volume(predict_batch, shape, patch, batch, overlap) -> dict:
  images = np.random.default_rng(1).standard_normal(tuple(shape) + (5,)).astype(np.float32)
  corners = sliding_window.sliding_window_corners(shape, patch, overlap)
  sliding_window.predict_volume(predict_batch, images, corners[:batch], patch, batch)  # warm-up
  t = time.perf_counter()
  sliding_window.predict_volume(predict_batch, images, corners, patch, batch)
  seconds = time.perf_counter() - t
  return {"seconds": seconds, "patches": len(corners), "shape": list(shape), "overlap": overlap,
          "patches_per_s": len(corners) / seconds}


FUNCTIONS = ("train_seg", "train_pretrain", "infer")


def without_emulated_bf16(names: list[str], what: str, keep: bool = False) -> list[str]:
  """`names` less its bf16 ones on a CPU without bf16 instructions (AVX2), unless `keep`
  (config.emulated_bf16, on in the smoke variant so that tests run those paths): there bf16 is emulated
  and far slower than float32 (PyTorch 2.13's bf16 autocast did not finish one warm-up and two
  steps of the paper network in 280 s on an AVX2 EPYC, where float32 takes 3 s a step), so it
  can be neither anyone's fastest setting nor worth the benchmark's time."""
  if keep or jax.default_backend() != "cpu" or hardware.native_bf16_cpu():
    return names
  kept = [n for n in names if "bf16" not in n and "bfloat16" not in n]
  if len(kept) < len(names):
    logging.warning("[benchmark] %s: skipping %s on this CPU (%s, no bf16 instructions: "
                    "emulated bf16 is slower than float32)", what,
                    ", ".join(n for n in names if n not in kept), hardware.cpu_isa()["isa"])
  return kept


def bench_torch(config, volume_shape) -> dict:
  """PyTorch's settings, timed in this run, each in a fresh process of its own
  (`python -m msjax.bench_torch`: in this one, after JAX and oneDNN, PyTorch ran up to 1.8x
  slower); {} when torch is not installed."""
  import importlib.util
  import subprocess
  import sys
  if importlib.util.find_spec("torch") is None:
    logging.warning("PyTorch is not installed (pip install -e '.[bench]'): no reference column")
    return {}
  out, meta = {}, {}
  for setting in without_emulated_bf16(config_base.parse_list(config.torch_settings),
                                      "PyTorch", config.emulated_bf16):
    logging.info("[benchmark] PyTorch %s (in a process of its own)", setting)
    args = {"setting": setting, "base_width": config.base_width, "batch": config.batch_size,
            "patch": config.patch_size, "warmup": config.warmup, "repeats": config.repeats,
            "threads": os.cpu_count() or 1, "overlap": config.overlap,
            "volume_shape": list(volume_shape) if volume_shape else None}
    proc = subprocess.run([sys.executable, "-m", "msjax.bench_torch", json.dumps(args)],
                          capture_output=True, text=True)
    if proc.returncode:
      raise RuntimeError(f"the PyTorch reference ({setting}) failed:\n{proc.stderr[-2000:]}")
    meta = json.loads(proc.stdout.strip().splitlines()[-1])
    r = meta["result"]
    res = {name: {**{k: v for k, v in r[name].items() if k != "times"},
                  **_stats(r[name]["times"], config.batch_size)} for name in FUNCTIONS}
    if "volume_infer" in r:
      res["volume_infer"] = r["volume_infer"]
    out[setting] = res
    logging.info("[benchmark] PyTorch %s: %s", setting, _figures(res))
  return {"version": meta.get("version"), "threads": meta.get("threads"), "settings": out,
          "process": "one fresh process per setting"}


def _figures(res: dict) -> str:
  """One setting's throughputs, for the progress log."""
  return ", ".join(f"{k} {v['patches_per_s']:.2f} patches/s" for k, v in res.items()
                   if isinstance(v, dict) and "patches_per_s" in v)


def best(settings: dict, name: str) -> tuple[str, dict] | None:
  """The fastest setting for one function: (setting name, its result)."""
  have = [(s, r[name]) for s, r in settings.items() if name in r]
  if not have:
    return None
  key = (lambda sr: -sr[1]["seconds"]) if name == "volume_infer" else \
      (lambda sr: sr[1]["patches_per_s"])
  return max(have, key=key)


def train_seg_key(strategy: str) -> str:
  """The result name of the fine-tuning step of a strategy: 'train_seg' (VAN; 0CF does the same
  work), 'train_seg_3CF', ..."""
  return "train_seg" if strategy in ("VAN", "0CF") else f"train_seg_{strategy}"


def bench_setting(config, impl: str, dtype: str, peak: float, workdir: str, headline: bool,
                  volume_shape, runners: dict | None = None) -> dict:
  """Every function of one (formulation, dtype) setting: {result name: figures}; runners, when
  given, gets {result name: the compiled function, run once}."""
  runners = {} if runners is None else runners
  name = f"{impl}/{dtype}"
  mc = config_base.model(base_width=config.base_width, conv_impl=impl, dtype=dtype)
  tc = config_base.train()
  b, p = config.batch_size, config.patch_size
  functions = config_base.parse_list(config.functions)
  r: dict[str, dict] = {}

  def trace_dir(key: str) -> str | None:  # the headline setting's profiled functions only
    profiled = config.profile and headline and key in PROFILED
    return os.path.join(workdir, f"trace_{key}_{dtype}") if profiled else None

  if "train_seg" in functions:
    for strategy in config_base.parse_list(config.strategies):
      _, n_frozen = optim.parse_strategy(strategy)
      key = train_seg_key(optim.strategy_name(strategy))
      logging.info("[benchmark] %s: %s", name, key)
      r[key] = bench_jax_step("segmentation", mc, tc, b, p, config.warmup, config.repeats, peak,
                              trace_dir(key), n_frozen=n_frozen,
                              keep=runners.setdefault(key, {}))
  if "train_pretrain" in functions:
    logging.info("[benchmark] %s: train_pretrain", name)
    r["train_pretrain"] = bench_jax_step("position", mc, tc, b, p, config.warmup, config.repeats,
                                         peak, trace_dir("train_pretrain"),
                                         keep=runners.setdefault("train_pretrain", {}))
  if "infer" in functions:
    logging.info("[benchmark] %s: infer", name)
    r["infer"], volume = bench_jax_infer(
        mc, config.infer_batch, p, config.warmup, config.repeats, peak,
        volume_shape if headline else None, config.overlap, trace_dir("infer"),
        keep=runners.setdefault("infer", {}))
    if volume:
      r["volume_infer"] = volume
  for key in PROFILED:
    prof = r.get(key, {}).get("profile")
    if prof:
      batch = config.infer_batch if key == "infer" else b
      r[key]["profile_png"] = profiler.profile_figure(
          prof, f"{key} ({name}, width {config.base_width}, {batch}×{p}³): where a step's time "
          "goes", os.path.join(workdir, f"profile_{key}_{dtype}.png"))
  return r


def headline_ratios(results: dict, torch_settings: dict, impl: str) -> dict:
  """Per function: msjax's fastest setting of the headline formulation over PyTorch's fastest."""
  out = {}
  for name in FUNCTIONS + ("volume_infer",):
    ours = best({k: v for k, v in results.items() if k.startswith(impl + "/")}, name)
    theirs = best(torch_settings, name)
    if ours and theirs:
      ratio = (theirs[1]["seconds"] / ours[1]["seconds"] if name == "volume_infer" else
               ours[1]["patches_per_s"] / theirs[1]["patches_per_s"])
      out[name] = {"msjax": ours[0], "pytorch": theirs[0], "ratio": ratio}
  return out


class TorchServer:
  """A PyTorch process that times steps on request (`python -m msjax.bench_torch --serve`), warm
  for one paired round; its stderr goes to a file so that a chatty library cannot block it."""

  def __init__(self, config):
    import subprocess
    import sys
    import tempfile
    args = {"base_width": config.base_width, "batch": config.batch_size,
            "patch": config.patch_size, "threads": os.cpu_count() or 1}
    self._err = tempfile.TemporaryFile(mode="w+")
    self._proc = subprocess.Popen(
        [sys.executable, "-m", "msjax.bench_torch", "--serve", json.dumps(args)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._err, text=True)

  def __call__(self, setting: str, name: str, warmup: int, repeats: int) -> list[float]:
    self._proc.stdin.write(json.dumps({"setting": setting, "function": name, "warmup": warmup,
                                       "repeats": repeats}) + "\n")
    self._proc.stdin.flush()
    line = self._proc.stdout.readline()
    if not line:
      self._err.seek(0)
      raise RuntimeError(f"the PyTorch reference stopped in the paired rounds ({setting}, "
                         f"{name}):\n{self._err.read()[-2000:]}")
    return json.loads(line)["times"]

  def close(self):
    import subprocess
    try:
      self._proc.stdin.close()
      self._proc.wait(timeout=120)
    except (BrokenPipeError, subprocess.TimeoutExpired):  # it stopped, or does not
      self._proc.kill()
    self._err.close()


def paired_rounds(config, results: dict, torch_settings: dict, runners: dict, impl: str,
                  open_theirs) -> dict:
  """The headline measured in rounds that time both sides back to back: per function, msjax's
  fastest setting (its compiled step, still warm: runners) and PyTorch's fastest (in a process
  of its own opened for each round: open_theirs() -> theirs(setting, name, warmup, repeats) ->
  seconds per step, with a close()), which side goes first alternating round by round; the ratio
  is the median of the per-round ratios. Timed minutes apart, as the table's columns are, the
  ratio moved 0.98-1.56x between runs on one Zen 4 while msjax alone moved 10-20 % within
  minutes; with one PyTorch process for all rounds, two runs still read 1.34x and 1.11x for
  inference, PyTorch's bf16 speed differing by process (docs/benchmark.md): hence a fresh one
  per round."""
  pairs = {}
  for name in FUNCTIONS:
    ours = best({k: v for k, v in results.items() if k.startswith(impl + "/")}, name)
    them = best(torch_settings, name)
    if ours and them and name in runners.get(ours[0], {}):
      pairs[name] = (ours[0], them[0])
  out = {name: {"msjax": o, "pytorch": t, "ratios": [], "rounds": []}
         for name, (o, t) in pairs.items()}
  for r in range(int(config.paired_rounds) if pairs else 0):
    theirs = open_theirs()
    try:
      for name, (ours, them) in pairs.items():
        run = runners[ours][name]["run"]
        theirs(them, name, max(1, config.warmup), 0)  # this process's networks built, warm
        sides = {"msjax": lambda: profiler.timed(run, 0, config.repeats),
                 "pytorch": lambda: theirs(them, name, 0, config.repeats)}
        order = ["msjax", "pytorch"] if r % 2 == 0 else ["pytorch", "msjax"]
        seconds = {side: float(np.median(sides[side]())) for side in order}
        out[name]["ratios"].append(seconds["pytorch"] / seconds["msjax"])
        out[name]["rounds"].append(seconds)
        logging.info("[benchmark] paired round %d/%d, %s: msjax %s %.0f ms, PyTorch %s %.0f ms: "
                     "%.2fx", r + 1, config.paired_rounds, name, ours, 1e3 * seconds["msjax"],
                     them, 1e3 * seconds["pytorch"], out[name]["ratios"][-1])
    finally:
      theirs.close()
  for h in out.values():
    h["ratio"] = float(np.median(h["ratios"])) if h["ratios"] else None
  return {name: h for name, h in out.items() if h["ratios"]}


def _norm_isa() -> str:
  """What runs the instance norms on CPU: msjax's kernels in which instruction set, or XLA."""
  from msjax.ops import onednn
  if jax.default_backend() != "cpu" or not onednn.available()[0]:
    return "XLA"
  return f"msjax kernels, {onednn.norm_isa()}"


def run(config, workdir: str) -> dict:
  device = jax.devices()[0]
  impls = config_base.parse_list(config.conv_impls)
  dtypes = without_emulated_bf16(config_base.parse_list(config.dtypes), "msjax",
                                 config.emulated_bf16)
  info = {"backend": jax.default_backend(), "device": device.device_kind,
          "n_devices": jax.device_count(), "cpu": hardware.cpu_isa(),
          "cpu_count": os.cpu_count(), "jax": jax.__version__,
          "auto_dtype": hardware.compute_dtype("auto", impls[0]),
          "xla_flags": os.environ.get("XLA_FLAGS", ""), "norm_kernels": _norm_isa(),
          # what backs the heap: the kernel's THP mode, and glibc's malloc tunables (hugetlb=1 asks
          # for huge pages where the mode is 'madvise'; docs/benchmark.md, "Huge pages")
          "transparent_huge_pages": hardware.thp_mode(),
          "glibc_tunables": os.environ.get("GLIBC_TUNABLES", "")}
  peak = matmul_peak(config.matmul_size)
  logging.info("device %s (%s, %s); model.dtype=auto picks %s; float32 matmul peak %.1f GFLOP/s",
               info["device"], info["backend"], info["cpu"]["isa"], info["auto_dtype"],
               peak / 1e9)
  volume_shape = tuple(config.volume_shape) if config.volume else None
  # every dtype with the headline formulation; the other formulations in float32, beside it
  runs = [(impls[0], d) for d in dtypes] + [(i, "float32") for i in impls[1:]]
  results, runners = {}, {}
  for impl, dtype in runs:
    results[f"{impl}/{dtype}"] = bench_setting(config, impl, dtype, peak, workdir,
                                               impl == impls[0], volume_shape,
                                               runners.setdefault(f"{impl}/{dtype}", {}))
    logging.info("[benchmark] %s/%s: %s", impl, dtype, _figures(results[f"{impl}/{dtype}"]))
  torch_results = bench_torch(config, volume_shape) if config.torch else {}
  report = {"info": info, "matmul_peak_gflops": peak / 1e9,
            "config": json.loads(config.to_json_best_effort()), "results": results,
            "torch": torch_results or None}
  if torch_results:
    report["headline"] = headline_ratios(results, torch_results["settings"], impls[0])
    if config.paired_rounds:
      paired = paired_rounds(config, results, torch_results["settings"], runners, impls[0],
                             lambda: TorchServer(config))
      report["headline_timed_apart"] = report["headline"]
      report["headline"] = {**report["headline"], **paired}
  table = format_table(report)
  files.write_json(report, os.path.join(workdir, "benchmark.json"))
  files.write_text(table + "\n", os.path.join(workdir, "benchmark.md"))
  print(table)
  print(f"[benchmark] {os.path.join(workdir, 'benchmark.json')}, "
        f"{os.path.join(workdir, 'benchmark.md')}"
        + "".join(f", {r[k]['profile_png']}" for r in results.values() for k in PROFILED
                  if "profile_png" in r.get(k, {})))
  return report


def format_table(report) -> str:
  info, res, tr = report["info"], report["results"], report.get("torch") or {}
  cfg = report["config"]
  cpu = info["cpu"]
  lines = [f"msjax benchmark on {info['device']} ({info['backend']}; {cpu['model']}, ISA "
           f"{cpu['isa']}" + "".join(f" ({k}={v})" for k, v in cpu.get("caps", {}).items())
           + f", {info['cpu_count']} CPUs), jax {info['jax']}"
           + (f", PyTorch {tr['version']}" if tr else "") +
           f"; base width {cfg['base_width']}, {cfg['patch_size']}³ patches, batch "
           f"{cfg['batch_size']} (inference batch {cfg['infer_batch']}); float32 matmul peak "
           f"{report['matmul_peak_gflops']:.0f} GFLOP/s; model.dtype=auto picks "
           f"{info['auto_dtype']} here; instance norms: {info.get('norm_kernels', 'XLA')}", "",
           "| function | setting | compile s | ms/step median (min-max) | steps/s | patches/s "
           "| GFLOP/patch | % of f32 matmul peak | peak MB |",
           "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
  names = [n for r in res.values() for n in r if n != "volume_infer"]
  for name in dict.fromkeys(names):  # in the order measured: train_seg (VAN), its nCF, ...
    for setting, r in res.items():
      if name not in r:
        continue
      x = r[name]
      lines.append(
          f"| {name} | msjax {setting} | {x['compile_s']:.1f} | {x['ms_per_step']:.0f} "
          f"({x['ms_min']:.0f}-{x['ms_max']:.0f}) | {1e3 / x['ms_per_step']:.3f} | "
          f"{x['patches_per_s']:.2f} | {(x['gflop_per_patch'] or 0):.2f} | "
          f"{100 * (x['fraction_of_matmul_peak'] or 0):.1f} | {(x['peak_memory_mb'] or 0):.0f} |")
    for setting, r in (tr.get("settings") or {}).items():
      if name not in r:
        continue
      x = r[name]
      lines.append(f"| {name} | PyTorch {setting} | - | {x['ms_per_step']:.0f} ({x['ms_min']:.0f}"
                   f"-{x['ms_max']:.0f}) | {1e3 / x['ms_per_step']:.3f} | "
                   f"{x['patches_per_s']:.2f} | - | - | - |")
  vols = [(f"msjax {s}", r["volume_infer"]) for s, r in res.items() if "volume_infer" in r]
  vols += [(f"PyTorch {s}", r["volume_infer"]) for s, r in (tr.get("settings") or {}).items()
           if "volume_infer" in r]
  if vols:
    v = vols[0][1]
    lines += ["", f"Whole-volume inference, {'x'.join(map(str, v['shape']))} exam, sliding window "
              f"overlap {v['overlap']} ({v['patches']} patches): "
              + ", ".join(f"{n} {x['seconds']:.1f} s" for n, x in vols)]
  head, apart = report.get("headline"), report.get("headline_timed_apart") or {}
  if head:
    rounds = max((len(h.get("ratios", [])) for h in head.values()), default=0)
    lines += ["", "Headline, msjax's fastest setting over PyTorch's fastest"
              + (f" (train and infer: the median of {rounds} paired rounds, each timing both "
                 "sides back to back, which goes first alternating, PyTorch in a fresh process "
                 "each round; the range over rounds; the table's figures, timed minutes apart, "
                 "beside):" if rounds else ":")]
    for name, h in head.items():
      spread = (f", rounds {min(h['ratios']):.2f}-{max(h['ratios']):.2f}x, timed apart "
                f"{apart[name]['ratio']:.2f}x" if h.get("ratios") and name in apart else "")
      lines.append(f"  {name}: {h['ratio']:.2f}x (msjax {h['msjax']} vs PyTorch {h['pytorch']}"
                   f"{spread})")
  for setting, r in res.items():
    for key in PROFILED:  # train_seg is absent without VAN/0CF
      prof = r.get(key, {}).get("profile")
      if prof:
        lines += ["", f"Profile of {key} ({setting}), {prof['wall_ms_per_step']:.0f} ms/step "
                  "wall:"] + [f"  {k}: {v['ms']:.0f} ms ({100 * v['share']:.0f} % of op time)"
                              for k, v in prof["categories"].items()]
  return "\n".join(lines)

"""PyTorch reference of exactly the msjax network (layer for layer: `load_msjax_params` copies
msjax's parameters in and tests/test_benchmark.py compares the outputs) and its timing, for the
benchmark only (optional `bench` extra): float32, and bf16 autocast (PyTorch's fastest CPU
setting) channels-first and channels_last_3d. The only module that imports torch."""
from __future__ import annotations

import torch
from torch import nn

from msjax import profiler

LEVELS = 5


def _norm(c):
  return nn.InstanceNorm3d(c, affine=True, eps=1e-5)


def _act():
  return nn.LeakyReLU(0.01)


class Encoder(nn.Module):
  def __init__(self, c_in=5, base=16, dropout=0.3):
    super().__init__()
    w = [base * 2 ** i for i in range(LEVELS)]
    self.levels = nn.ModuleList()
    for level in range(LEVELS):
      cin = c_in if level == 0 else w[level - 1]
      c = w[level]
      self.levels.append(nn.ModuleDict(dict(
          pre=nn.Identity() if level == 0 else nn.Sequential(_norm(cin), _act()),
          conv_a=nn.Conv3d(cin, c, 3, stride=1 if level == 0 else 2, padding=1),
          ctx=nn.Sequential(_norm(c), _act(), nn.Conv3d(c, c, 3, padding=1), nn.Dropout(dropout),
                            _norm(c), _act(), nn.Conv3d(c, c, 3, padding=1)))))

  def forward(self, x):
    skips = []
    for lv in self.levels:
      r = lv["conv_a"](lv["pre"](x))
      x = r + lv["ctx"](r)
      skips.append(x)
    return skips


class SegmentationNet(nn.Module):
  def __init__(self, c_in=5, base=16, dropout=0.3):
    super().__init__()
    w = [base * 2 ** i for i in range(LEVELS)]
    self.encoder = Encoder(c_in, base, dropout)
    self.up = nn.ModuleDict()
    self.loc = nn.ModuleDict()
    self.seg = nn.ModuleDict()
    for level in (4, 3, 2, 1):
      f = w[level - 1]
      self.up[str(level)] = nn.Sequential(_norm(w[level]), _act(), nn.Upsample(scale_factor=2),
                                          nn.Conv3d(w[level], f, 3, padding=1))
      layers = [_norm(2 * f), _act(), nn.Conv3d(2 * f, 2 * f, 3, padding=1)]
      self.loc[str(level)] = nn.Sequential(*layers)
      if level > 1:
        self.loc[f"{level}b"] = nn.Sequential(_norm(2 * f), _act(), nn.Conv3d(2 * f, f, 1))
      if level <= 3:
        self.seg[str(level)] = nn.Conv3d(2 * f, 1, 1)
    self.up2 = nn.Upsample(scale_factor=2)

  def forward(self, x):
    skips = self.encoder(x)
    x = skips[-1]
    seg = {}
    for level in (4, 3, 2, 1):
      x = torch.cat([skips[level - 1], self.up[str(level)](x)], dim=1)
      a = self.loc[str(level)](x)
      if level <= 3:
        seg[level] = self.seg[str(level)](a)
      if level > 1:
        x = self.loc[f"{level}b"](a)
    return seg[1] + self.up2(seg[2] + self.up2(seg[3]))


class PositionRegressor(nn.Module):
  def __init__(self, c_in=5, base=16, dropout=0.3):
    super().__init__()
    self.encoder = Encoder(c_in, base, dropout)
    self.head = nn.Linear(base * 2 ** (LEVELS - 1), 3)

  def forward(self, x):
    return 0.5 + self.head(self.encoder(x)[-1].mean(dim=(2, 3, 4)))


def soft_dice_loss(logits, target, smooth=1.0):
  p = torch.sigmoid(logits)
  return 1 - (2 * (p * target).sum() + smooth) / (p.sum() + target.sum() + smooth)


def n_params(model) -> int:
  return sum(p.numel() for p in model.parameters())


# ---- msjax's parameters in the PyTorch network (the test that both are one function) -------------

def module_paths(net) -> dict[str, str]:
  """PyTorch module name -> msjax parameter path prefix, for every module holding parameters."""
  out = {}
  for i in range(LEVELS):
    first = 3 * (i + 1) - 2
    lv = f"encoder.levels.{i}"
    if i > 0:
      out[f"{lv}.pre.0"] = f"encoder/norm{first}"
    out[f"{lv}.conv_a"] = f"encoder/conv{first}"
    for j, k in ((0, first + 1), (4, first + 2)):  # ctx: norm, act, conv, dropout, norm, act, conv
      out.update({f"{lv}.ctx.{j}": f"encoder/norm{k}", f"{lv}.ctx.{j + 2}": f"encoder/conv{k}"})
  if isinstance(net, PositionRegressor):
    out["head"] = "head"
    return out
  for level in (4, 3, 2, 1):
    out.update({f"up.{level}.0": f"decoder/up{level}/norm",
                f"up.{level}.3": f"decoder/up{level}/conv",
                f"loc.{level}.0": f"decoder/loc{level}/norm_a",
                f"loc.{level}.2": f"decoder/loc{level}/conv_a"})
    if level > 1:
      out.update({f"loc.{level}b.0": f"decoder/loc{level}/norm_b",
                  f"loc.{level}b.2": f"decoder/loc{level}/conv_b"})
    if level <= 3:
      out[f"seg.{level}"] = f"decoder/seg{level}"
  return out


def load_msjax_params(net, flat_params: dict) -> None:
  """Copies msjax parameters ({'encoder/conv1/kernel': array, ...}) into the PyTorch network:
  DHWIO kernels -> (O, I, D, H, W), dense (I, O) -> (O, I). Raises unless every parameter of
  each side is used exactly once with its shape (a layer added, removed or reshaped on either
  side fails here)."""
  import numpy as np
  modules, used, filled = dict(net.named_modules()), set(), set()
  for name, prefix in module_paths(net).items():
    m = modules[name]
    keys = ("scale", "bias") if isinstance(m, nn.InstanceNorm3d) else ("kernel", "bias")
    for attr, key in zip(("weight", "bias"), keys):
      value = np.asarray(flat_params[f"{prefix}/{key}"])
      if key == "kernel":
        value = value.T if isinstance(m, nn.Linear) else value.transpose(4, 3, 0, 1, 2)
      target = getattr(m, attr)
      if tuple(target.shape) != value.shape:
        raise ValueError(f"{name}.{attr} {tuple(target.shape)} <- {prefix}/{key} {value.shape}")
      with torch.no_grad():
        target.copy_(torch.from_numpy(np.array(value, np.float32)))
      used.add(f"{prefix}/{key}")
      filled.add(f"{name}.{attr}")
  unused = sorted(set(flat_params) - used)
  unfilled = sorted(set(dict(net.named_parameters())) - filled)
  if unused or unfilled:
    raise ValueError(f"msjax parameters with no PyTorch place: {unused}; PyTorch parameters with "
                     f"no msjax source: {unfilled}")


# ---- timing (the benchmark's reference column) ---------------------------------------------------

SETTINGS = {  # name -> (bf16 autocast, channels_last_3d)
    "float32": (False, False),
    "bf16": (True, False),
    "bf16_cl3d": (True, True),
}


def step_functions(setting: str, base_width: int, dropout: float, batch: int, patch: int) -> dict:
  """{train_seg, train_pretrain, infer: a function running one step} for one PyTorch setting:
  float32, or bf16 autocast (PyTorch's fastest CPU setting) channels-first or channels_last_3d;
  also "<name>_params" (parameter counts) and "predict_batch" (whole-volume inference with the
  inference network)."""
  import numpy as np
  bf16, channels_last = SETTINGS[setting]
  fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
  torch.manual_seed(0)
  x = torch.randn(batch, 5, patch, patch, patch).contiguous(memory_format=fmt)
  autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16)  # noqa: E731
  out = {}
  for name, net, target, loss_fn in (
      ("train_seg", SegmentationNet(5, base_width, dropout),
       (torch.rand(batch, 1, patch, patch, patch) > 0.95).float(), soft_dice_loss),
      ("train_pretrain", PositionRegressor(5, base_width, dropout), torch.rand(batch, 3),
       torch.nn.functional.mse_loss)):
    net = net.to(memory_format=fmt)
    opt = torch.optim.Adam(net.parameters(), lr=5e-4, weight_decay=1e-5)
    net.train()

    def step(net=net, opt=opt, target=target, loss_fn=loss_fn):
      opt.zero_grad(set_to_none=True)
      with autocast():
        y = net(x)
      loss_fn(y.float(), target).backward()  # loss in float32, as msjax's
      opt.step()
    out[name] = step
    out[f"{name}_params"] = n_params(net)
  seg = SegmentationNet(5, base_width, dropout).to(memory_format=fmt).eval()

  def infer():
    with torch.inference_mode(), autocast():
      torch.sigmoid(seg(x))

  def predict_batch(b):
    t_in = torch.from_numpy(np.ascontiguousarray(b.transpose(0, 4, 1, 2, 3)))
    with torch.inference_mode(), autocast():
      return torch.sigmoid(seg(t_in.contiguous(memory_format=fmt)).float())[:, 0].numpy()
  out.update(infer=infer, predict_batch=predict_batch)
  return out


def bench_setting(setting: str, base_width: int, dropout: float, batch: int, patch: int,
                  warmup: int, repeats: int, volume=None) -> dict:
  """Seconds per step of train_seg, train_pretrain and infer for one PyTorch setting
  (`step_functions`). `volume(predict_batch)` times whole-volume inference with the same
  network when given."""
  fns = step_functions(setting, base_width, dropout, batch, patch)
  out = {name: {"params": fns[f"{name}_params"],
                "times": profiler.timed(fns[name], warmup, repeats)}
         for name in ("train_seg", "train_pretrain")}
  out["infer"] = {"times": profiler.timed(fns["infer"], warmup, repeats)}
  if volume is not None:
    out["volume_infer"] = volume(fns["predict_batch"])
  return out


def serve(a: dict, lines, write) -> None:
  """Times steps on request, for the benchmark's paired rounds: each line of `lines` is JSON
  {"setting", "function", "warmup", "repeats"}; each answer, written as one JSON line, is
  {"times": [...]}. A setting's networks are built on its first request and kept for the
  process's later requests (the benchmark opens one such process per round and warms it
  untimed before timing it)."""
  import json
  built: dict[str, dict] = {}
  for line in lines:
    if not line.strip():
      continue
    q = json.loads(line)
    if q["setting"] not in built:
      built[q["setting"]] = step_functions(q["setting"], a["base_width"], 0.3, a["batch"],
                                           a["patch"])
    times = profiler.timed(built[q["setting"]][q["function"]], int(q["warmup"]),
                           int(q["repeats"]))
    write(json.dumps({"times": times}))


def main(argv=None) -> None:
  """`python -m msjax.bench_torch '<json>'`: one setting timed in a fresh process, its figures as
  the last line of stdout (JSON); with `--serve` first, steps timed on request (`serve`). The
  benchmark runs PyTorch this way because in its own process, after JAX and oneDNN had run,
  PyTorch's float32 training step of the paper network ran 1.8x slower than in a process of its
  own (AVX2 EPYC, 2 cores: 1.99 against 3.64 patches/s)."""
  import json
  import sys

  from msjax.benchmark import bench_volume  # numpy and the sliding window only; JAX stays idle
  args = list(argv or sys.argv[1:])
  a = json.loads(args[-1])
  torch.set_num_threads(int(a["threads"]))
  if args[0] == "--serve":  # the paired rounds: requests on stdin, answers on stdout
    def write(text):
      sys.stdout.write(text + "\n")
      sys.stdout.flush()
    serve(a, sys.stdin, write)
    return
  volume = None
  if a.get("volume_shape"):
    volume = lambda pb: bench_volume(pb, tuple(a["volume_shape"]), int(a["patch"]),  # noqa: E731
                                     int(a["batch"]), a["overlap"])
  r = bench_setting(a["setting"], a["base_width"], 0.3, a["batch"], a["patch"], a["warmup"],
                    a["repeats"], volume)
  print(json.dumps({"version": torch.__version__, "threads": torch.get_num_threads(),
                    "result": r}))


if __name__ == "__main__":
  main()

"""PyTorch reference of exactly the msjax network (layer for layer, same parameter count) and its
timing, for the benchmark only (optional `bench` extra): float32, and bf16 autocast (PyTorch's
fastest CPU setting) channels-first and channels_last_3d. The only module that imports torch."""
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


# ---- timing (the benchmark's reference column) ---------------------------------------------------

SETTINGS = {  # name -> (bf16 autocast, channels_last_3d)
    "float32": (False, False),
    "bf16": (True, False),
    "bf16_cl3d": (True, True),
}


def bench_setting(setting: str, base_width: int, dropout: float, batch: int, patch: int,
                  warmup: int, repeats: int, volume=None) -> dict:
  """Seconds per step of train_seg, train_pretrain and infer for one PyTorch setting: float32,
  or bf16 autocast (PyTorch's fastest CPU setting) channels-first or channels_last_3d.
  `volume(predict_batch)` times whole-volume inference with the same network when given."""
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

    def step():
      opt.zero_grad(set_to_none=True)
      with autocast():
        y = net(x)
      loss_fn(y.float(), target).backward()  # loss in float32, as msjax's
      opt.step()
    out[name] = {"params": n_params(net), "times": profiler.timed(step, warmup, repeats)}
    if name == "train_seg":
      seg = net
  seg.eval()
  with torch.inference_mode(), autocast():
    out["infer"] = {"times": profiler.timed(lambda: torch.sigmoid(seg(x)), warmup, repeats)}
    if volume is not None:
      def predict_batch(b):
        t_in = torch.from_numpy(np.ascontiguousarray(b.transpose(0, 4, 1, 2, 3)))
        return torch.sigmoid(seg(t_in.contiguous(memory_format=fmt)).float())[:, 0].numpy()
      out["volume_infer"] = volume(predict_batch)
  return out

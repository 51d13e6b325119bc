"""What the machine can do: the CPU's vector ISA and the compute dtype that fits it.

`model.dtype="auto"` resolves here: bfloat16 on GPU and TPU, and on a CPU with native bf16
instructions (avx512_bf16 or AMX) when the oneDNN path is in use (it is what runs bf16
convolutions fast on CPU); float32 everywhere else, where bf16 would be emulated and slower.
"""
from __future__ import annotations

import functools
import platform

from absl import logging

DTYPES = ("float32", "bfloat16")
# from most to least capable; the first whose flags are all present names the ISA
_ISA_LEVELS = (("amx", ("amx_bf16", "amx_tile")), ("avx512_bf16", ("avx512_bf16",)),
               ("avx512", ("avx512f",)), ("avx2", ("avx2",)))


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset:
  """The CPU's feature flags (Linux /proc/cpuinfo); empty where they cannot be read."""
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith(("flags", "Features")):
          return frozenset(line.split(":", 1)[1].split())
  except OSError:
    pass
  return frozenset()


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def cpu_isa() -> dict:
  """{"model", "isa" (amx | avx512_bf16 | avx512 | avx2 | other), "flags" (the relevant ones)}."""
  flags = cpu_flags()
  isa = next((name for name, need in _ISA_LEVELS if all(f in flags for f in need)), "other")
  relevant = sorted(f for f in flags if f.startswith(("avx", "amx", "fma")))
  return {"model": cpu_model(), "machine": platform.machine(), "isa": isa, "flags": relevant}


def native_bf16_cpu() -> bool:
  return cpu_isa()["isa"] in ("amx", "avx512_bf16")


def compute_dtype(name: str, conv_impl: str = "onednn") -> str:
  """'float32', 'bfloat16', or 'auto' resolved for the default backend (see the module doc)."""
  if name in DTYPES:
    return name
  if name != "auto":
    raise ValueError(f"model.dtype must be one of {DTYPES + ('auto',)}, got {name!r}")
  import jax
  backend = jax.default_backend()
  if backend != "cpu":
    chosen, why = "bfloat16", f"{backend} backend"
  elif not native_bf16_cpu():
    chosen, why = "float32", f"CPU without bf16 instructions ({cpu_isa()['isa']})"
  elif conv_impl != "onednn":
    chosen, why = "float32", f"conv_impl={conv_impl!r} has no fast bf16 path on CPU"
  else:
    from msjax.ops import onednn
    ok, reason = onednn.available()
    chosen, why = (("bfloat16", f"CPU with {cpu_isa()['isa']}") if ok else
                   ("float32", f"oneDNN unavailable: {reason.splitlines()[0]}"))
  _log_once(f"model.dtype=auto -> {chosen} ({why})")
  return chosen


_logged: set = set()


def _log_once(message: str) -> None:
  if message not in _logged:
    _logged.add(message)
    logging.info(message)

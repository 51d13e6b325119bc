"""What the machine can do: the CPU's vector ISA and the compute dtype that fits it.

`model.dtype="auto"` resolves here: bfloat16 on GPU and TPU, and on a CPU with native bf16
instructions (avx512_bf16 or AMX) when the oneDNN path is in use (it is what runs bf16
convolutions fast on CPU); float32 everywhere else, where bf16 would be emulated and slower.
"""
from __future__ import annotations

import functools
import os
import platform
import re

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


# the ISA caps a user sets to run (or measure) this CPU as a lesser one, mapped onto _ISA_LEVELS:
# oneDNN's ONEDNN_MAX_CPU_ISA and XLA's --xla_cpu_max_isa (what a kernel may use, both sides)
_RANK = {"other": 0, **{name: len(_ISA_LEVELS) - i for i, (name, _) in enumerate(_ISA_LEVELS)}}
_ONEDNN_CAPS = (("AVX512_CORE_AMX", "amx"), ("AVX10_1_512_AMX", "amx"), ("AVX10", "avx512_bf16"),
                ("AVX512_CORE_FP16", "avx512_bf16"), ("AVX512_CORE_BF16", "avx512_bf16"),
                ("AVX512", "avx512"), ("AVX2", "avx2"), ("AVX", "other"), ("SSE", "other"))
_XLA_CAPS = (("AMX", "amx"), ("AVX512_BF16", "avx512_bf16"), ("AVX512", "avx512"),
             ("AVX2", "avx2"), ("AVX", "other"), ("SSE", "other"))


def isa_caps(environ=None) -> dict:
  """{variable: the ISA level it caps this process at} for the caps that are set."""
  env = os.environ if environ is None else environ
  caps = {}
  onednn = env.get("ONEDNN_MAX_CPU_ISA", env.get("DNNL_MAX_CPU_ISA", "")).strip().upper()
  if onednn and onednn not in ("ALL", "DEFAULT"):
    caps["ONEDNN_MAX_CPU_ISA"] = next((lvl for p, lvl in _ONEDNN_CAPS if onednn.startswith(p)),
                                      "other")
  m = re.search(r"--xla_cpu_max_isa=(\S+)", env.get("XLA_FLAGS", ""))
  if m:
    xla = m.group(1).upper()
    caps["xla_cpu_max_isa"] = next((lvl for p, lvl in _XLA_CAPS if xla.startswith(p)), "other")
  return caps


def cpu_isa(environ=None) -> dict:
  """{"model", "isa" (amx | avx512_bf16 | avx512 | avx2 | other), "flags" (the relevant ones),
  "caps"}: the ISA is the CPU's, lowered to the lowest cap set (isa_caps), since a kernel that
  may not use bf16 instructions emulates bf16, as on a CPU without them."""
  flags = cpu_flags()
  isa = next((name for name, need in _ISA_LEVELS if all(f in flags for f in need)), "other")
  caps = isa_caps(environ)
  for level in caps.values():
    if _RANK[level] < _RANK[isa]:
      isa = level
  relevant = sorted(f for f in flags if f.startswith(("avx", "amx", "fma")))
  return {"model": cpu_model(), "machine": platform.machine(), "isa": isa, "flags": relevant,
          "caps": caps}


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


THP_MODE_FILE = "/sys/kernel/mm/transparent_hugepage/enabled"


def thp_mode(path: str = THP_MODE_FILE) -> str:
  """The kernel's transparent huge page mode ('always', 'madvise', 'never'); '' if unknown."""
  try:
    with open(path) as f:
      m = re.search(r"\[(\w+)\]", f.read())
    return m.group(1) if m else ""
  except OSError:
    return ""

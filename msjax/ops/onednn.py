"""oneDNN 3D convolutions as XLA FFI custom calls: the CPU fast path (`model.conv_impl="onednn"`).

XLA's CPU backend runs 3D convolutions through a generic loop nest; oneDNN (what PyTorch uses on
CPU) has JIT-generated kernels for them, in float32 and, on CPUs with bf16 instructions
(avx512_bf16, AMX), in bfloat16 with float32 accumulation. `onednn_conv.cc` wraps oneDNN's
forward, backward-data and backward-weights convolutions as three XLA FFI handlers (two backward
calls, so that XLA drops the gradient nobody reads); this module compiles
it once per (source, jax, oneDNN) into `~/.cache/msjax/ext/` (or `$MSJAX_EXT_CACHE`) with the
system C++ compiler, registers the handlers, and exposes `conv3d(x, w, stride)` with a custom VJP
(CPU only: msjax.ops.conv decides when to use it).

oneDNN comes from PyPI (a dependency on Linux x86-64: the GNU-OpenMP build, headers included) or
from `$MSJAX_ONEDNN_ROOT` (a prefix with include/oneapi/dnnl and lib/libdnnl.so). When the library
or a compiler is missing, or oneDNN would run a shape with its slow reference kernel (bfloat16 on
a CPU without bf16 instructions), `supports()` says why and msjax.ops.conv falls back.
"""
from __future__ import annotations

import ctypes
import functools
import glob
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading

import jax
import jax.numpy as jnp
import numpy as np

SOURCE = os.path.join(os.path.dirname(__file__), "onednn_conv.cc")
# msjax's own instance-norm kernels (msjax/ops/norm.py) ride in the same library: one build, one
# cache entry, and they run wherever the convolutions do
SOURCES = (SOURCE, os.path.join(os.path.dirname(__file__), "norm_kernels.cc"),
           os.path.join(os.path.dirname(__file__), "winograd_conv.cc"),
           os.path.join(os.path.dirname(__file__), "winograd_bf16.cc"))
_lock = threading.Lock()
_state: dict = {}


def _prefixes():
  root = os.environ.get("MSJAX_ONEDNN_ROOT")
  return ([root] if root else []) + [sys.prefix, "/usr/local", "/usr"]


def find_onednn() -> tuple[str, str] | None:
  """(include dir, lib dir) of a oneDNN 3.x installation, or None."""
  for prefix in _prefixes():
    inc = os.path.join(prefix, "include")
    if not os.path.exists(os.path.join(inc, "oneapi", "dnnl", "dnnl.hpp")):
      continue
    for lib in (os.path.join(prefix, "lib"), os.path.join(prefix, "lib64"),
                os.path.join(prefix, "lib", "x86_64-linux-gnu")):
      if glob.glob(os.path.join(lib, "libdnnl.so*")):
        return inc, lib
  return None


def _build(inc: str, lib: str) -> str:
  compiler = os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++")
  if not compiler:
    raise RuntimeError("no C++ compiler (g++/c++) on PATH to build the oneDNN extension")
  source = b""
  for path in SOURCES:
    with open(path, "rb") as f:
      source += f.read()
  version_h = os.path.join(inc, "oneapi", "dnnl", "dnnl_version.h")
  version = ""
  if os.path.exists(version_h):
    with open(version_h) as f:
      version = f.read()
  key = hashlib.sha256(source + jax.__version__.encode() + version.encode() +
                       lib.encode()).hexdigest()[:16]
  cache = os.environ.get("MSJAX_EXT_CACHE") or os.path.expanduser("~/.cache/msjax/ext")
  out = os.path.join(cache, key, "libmsjax_onednn.so")
  if os.path.exists(out):
    return out
  os.makedirs(os.path.dirname(out), exist_ok=True)
  fd, tmp = tempfile.mkstemp(suffix=".so", dir=os.path.dirname(out))
  os.close(fd)
  from absl import logging
  logging.info("building the oneDNN convolution and norm extension once (about 20 s) -> %s", out)
  cmd = [compiler, "-O3", "-std=c++17", "-shared", "-fPIC", "-fopenmp", "-o", tmp, *SOURCES,
         f"-I{jax.ffi.include_dir()}", f"-I{inc}", f"-L{lib}", "-ldnnl", f"-Wl,-rpath,{lib}"]
  proc = subprocess.run(cmd, capture_output=True, text=True)
  if proc.returncode != 0:
    os.unlink(tmp)
    raise RuntimeError(f"building the oneDNN extension failed ({' '.join(cmd)}):\n"
                       + proc.stderr[-2000:])
  os.replace(tmp, out)  # atomic: a concurrent build never loads a half-written library
  return out


def available() -> tuple[bool, str]:
  """(True, path of the loaded extension) or (False, why not). Builds and registers once."""
  with _lock:
    if "ok" in _state:
      return _state["ok"], _state["why"]
    try:
      found = find_onednn()
      if found is None:
        raise RuntimeError("oneDNN not found (pip install onednn-cpu-gomp==2023.2.0 "
                           "onednn-devel-cpu-gomp==2023.2.0, or set MSJAX_ONEDNN_ROOT)")
      path = _build(*found)
      lib = ctypes.cdll.LoadLibrary(path)
      for name in ("MsjaxConv3dForward", "MsjaxConv3dBackwardData", "MsjaxConv3dBackwardWeights",
                   "MsjaxNormForward", "MsjaxNormBackward"):
        jax.ffi.register_ffi_target(f"msjax_{name}", jax.ffi.pycapsule(getattr(lib, name)),
                                    platform="cpu")
      lib.MsjaxNormIsa.restype = ctypes.c_int
      lib.MsjaxConvImpl.restype = ctypes.c_int
      lib.MsjaxConvImpl.argtypes = [ctypes.c_int64] * 8 + [ctypes.c_int, ctypes.c_char_p,
                                                          ctypes.c_int64]
      _state.update(ok=True, why=path, lib=lib)
    except Exception as e:  # noqa: BLE001 - any failure means: use the fallback, say why
      _state.update(ok=False, why=str(e))
    return _state["ok"], _state["why"]


def norm_isa() -> str:
  """The instruction set msjax's norm kernels run in this process ('avx512', 'avx2',
  'baseline'): the CPU's best, held down by ONEDNN_MAX_CPU_ISA as oneDNN is."""
  ok, why = available()
  if not ok:
    raise RuntimeError(why)
  return ("baseline", "avx2", "avx512")[_state["lib"].MsjaxNormIsa()]


DTYPES = (jnp.float32, jnp.bfloat16)


@functools.lru_cache(maxsize=None)
def kernels(x_shape: tuple, w_shape: tuple, stride: int, dtype: str) -> str:
  """The kernels oneDNN picks for this convolution: 'forward|backward-data|backward-weights'
  (e.g. 'brgconv:avx512_core_bf16|...'). Raises RuntimeError without an implementation."""
  ok, why = available()
  if not ok:
    raise RuntimeError(why)
  n, d, h, w, c = x_shape
  buf = ctypes.create_string_buffer(512)
  rc = _state["lib"].MsjaxConvImpl(n, c, d, h, w, w_shape[-1], w_shape[0], stride,
                                   int(dtype == "bfloat16"), buf, len(buf))
  if rc != 0:
    raise RuntimeError(f"oneDNN has no {dtype} convolution for {x_shape}: {buf.value.decode()}")
  return buf.value.decode()


def known_wrong(x_shape, w_shape, stride: int, dtype) -> str:
  """Why oneDNN must not run this convolution although it has a kernel for it ('' if it may).

  oneDNN 3.2's bf16 backward-weights kernel (jit_bf16:avx512_core_bf16) returns wrong weight
  gradients (relative error ~1.2, and reads uninitialised memory) for stride-1 convolutions whose
  spatial extent is 2 voxels: the paper network's 2³ bottleneck. Measured against XLA on Zen 4:
  every other shape tried (1³, 3³ to 32³, stride 2 onto 2³) is exact, float32 is exact."""
  if jnp.dtype(dtype) == jnp.bfloat16 and stride == 1 and min(x_shape[1:4]) == 2:
    return "oneDNN 3.2's bf16 weight gradient is wrong at a 2-voxel extent"
  return ""


def supports(x_shape, w_shape, stride: int, dtype) -> tuple[bool, str]:
  """(True, kernels) when this convolution runs through oneDNN's own fast kernels; (False, why)
  when the extension is unavailable, the type is not float32/bfloat16, oneDNN would fall back
  to its reference implementation (slow: e.g. bfloat16 on an AVX2-only CPU), or its kernel is
  known to be wrong for the shape (`known_wrong`)."""
  dtype = jnp.dtype(dtype)
  if dtype not in DTYPES:
    return False, f"no oneDNN path for {dtype}"
  wrong = known_wrong(x_shape, w_shape, stride, dtype)
  if wrong:
    return False, wrong
  ok, why = available()
  if not ok:
    return False, why
  try:
    impl = kernels(tuple(x_shape), tuple(w_shape), int(stride), dtype.name)
  except RuntimeError as e:
    return False, str(e)
  if any(part.startswith("ref") for part in impl.split("|")):
    return False, (f"oneDNN would run {dtype.name} with its slow reference kernel ({impl}): "
                   "this CPU lacks the instructions")
  return True, impl


def _out_shape(x, w, stride):
  k = w.shape[0]
  sp = [(n + 2 * (k // 2) - k) // stride + 1 for n in x.shape[1:4]]
  return (x.shape[0], *sp, w.shape[-1])


def _forward(x, w, b, stride):
  call = jax.ffi.ffi_call("msjax_MsjaxConv3dForward",
                          jax.ShapeDtypeStruct(_out_shape(x, w, stride), x.dtype))
  return call(x, w, b, stride=np.int64(stride))


def _backward_data(x, w, dy, stride):
  """The input gradient (x gives only its shape and type)."""
  call = jax.ffi.ffi_call("msjax_MsjaxConv3dBackwardData", jax.ShapeDtypeStruct(x.shape, x.dtype))
  return call(w, dy, stride=np.int64(stride))


def _backward_weights(x, w, dy, stride):
  """The kernel and bias gradients, float32 (w gives only its shape)."""
  call = jax.ffi.ffi_call("msjax_MsjaxConv3dBackwardWeights",
                          (jax.ShapeDtypeStruct(w.shape, jnp.float32),
                           jax.ShapeDtypeStruct(w.shape[-1:], jnp.float32)))
  return call(x, dy, stride=np.int64(stride))


def _make(stride: int):
  @jax.custom_vjp
  def conv(x, w, b):
    return _forward(x, w, b, stride)

  def fwd(x, w, b):
    return conv(x, w, b), (x, w)

  def bwd(res, dy):
    # two custom calls without side effects: XLA removes the one whose result nobody reads (the
    # image's gradient at conv1, the kernel gradient of a frozen conv)
    x, w = res
    dy = dy.astype(x.dtype)
    return (_backward_data(x, w, dy, stride),) + _backward_weights(x, w, dy, stride)

  conv.defvjp(fwd, bwd)
  return conv


_CONVS = {s: _make(s) for s in (1, 2)}


def conv3d(x, w, b, stride: int):
  """oneDNN convolution plus bias on CPU: x (N, D, H, W, C) float32 or bfloat16, w (k, k, k, C, O)
  and b (O,) the float32 parameters; the result has x's type, the parameter gradients are
  float32. Check `supports` first."""
  if stride not in _CONVS:
    raise ValueError(f"oneDNN path: stride {stride} not supported (1 or 2)")
  return _CONVS[stride](x, w.astype(jnp.float32), b.astype(jnp.float32))

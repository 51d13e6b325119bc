"""oneDNN 3D convolutions as XLA FFI custom calls: the CPU fast path (`model.conv_impl="onednn"`).

XLA's CPU backend runs 3D convolutions through a generic loop nest; oneDNN (what PyTorch uses on
CPU) has JIT-generated kernels for them. `onednn_conv.cc` wraps oneDNN's forward, backward-data
and backward-weights convolutions as XLA FFI handlers; this module compiles it once per
(source, jax, oneDNN) into `~/.cache/msjax/ext/` (or `$MSJAX_EXT_CACHE`) with the system C++
compiler, registers the handlers, and exposes `conv3d(x, w, stride)` with a custom VJP.

oneDNN comes from PyPI (a dependency on Linux x86-64: the GNU-OpenMP build, headers included) or
from `$MSJAX_ONEDNN_ROOT` (a prefix with include/oneapi/dnnl and lib/libdnnl.so). When either the
library or a compiler is missing, `available()` says why and the model falls back to the "fold"
formulation; on GPU/TPU the same function lowers to XLA's convolution (platform_dependent).
"""
from __future__ import annotations

import ctypes
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
  with open(SOURCE, "rb") as f:
    source = f.read()
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
  logging.info("building the oneDNN convolution extension once (about 15 s) -> %s", out)
  cmd = [compiler, "-O3", "-std=c++17", "-shared", "-fPIC", "-o", tmp, SOURCE,
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
      for name in ("MsjaxConv3dForward", "MsjaxConv3dBackward"):
        jax.ffi.register_ffi_target(f"msjax_{name}", jax.ffi.pycapsule(getattr(lib, name)),
                                    platform="cpu")
      _state.update(ok=True, why=path)
    except Exception as e:  # noqa: BLE001 - any failure means: use the fallback, say why
      _state.update(ok=False, why=str(e))
    return _state["ok"], _state["why"]


def _out_shape(x, w, stride):
  k = w.shape[0]
  sp = [(n + 2 * (k // 2) - k) // stride + 1 for n in x.shape[1:4]]
  return (x.shape[0], *sp, w.shape[-1])


def _forward_cpu(x, w, stride):
  call = jax.ffi.ffi_call("msjax_MsjaxConv3dForward",
                          jax.ShapeDtypeStruct(_out_shape(x, w, stride), jnp.float32))
  return call(x, w, stride=np.int64(stride))


def _backward_cpu(x, w, dy, stride):
  call = jax.ffi.ffi_call("msjax_MsjaxConv3dBackward",
                          (jax.ShapeDtypeStruct(x.shape, jnp.float32),
                           jax.ShapeDtypeStruct(w.shape, jnp.float32)))
  return call(x, w, dy, stride=np.int64(stride))


def _xla(x, w, stride):
  from msjax.models.layers import conv3d_xla
  return conv3d_xla(x, w, stride)


def _make(stride: int):
  @jax.custom_vjp
  def conv(x, w):
    return jax.lax.platform_dependent(x, w, cpu=lambda a, b: _forward_cpu(a, b, stride),
                                      default=lambda a, b: _xla(a, b, stride))

  def fwd(x, w):
    return conv(x, w), (x, w)

  def bwd(res, dy):
    x, w = res

    def xla_grads(a, b, g):
      return jax.vjp(lambda a_, b_: _xla(a_, b_, stride), a, b)[1](g)
    return tuple(jax.lax.platform_dependent(
        x, w, dy, cpu=lambda a, b, g: _backward_cpu(a, b, g, stride), default=xla_grads))

  conv.defvjp(fwd, bwd)
  return conv


_CONVS = {s: _make(s) for s in (1, 2)}


def conv3d(x, w, stride: int):
  """Same math as layers.conv3d_xla (float32; other dtypes take the XLA path)."""
  if x.dtype != jnp.float32 or w.dtype != jnp.float32 or stride not in _CONVS:
    return _xla(x, w, stride)
  return _CONVS[stride](x, w)

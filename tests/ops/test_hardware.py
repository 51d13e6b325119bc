"""model.dtype=auto for the machine (msjax/ops/hardware.py)."""
import pytest


def _onednn_installed():
  import shutil

  from msjax.ops import onednn
  return onednn.find_onednn() is not None and bool(shutil.which("g++") or shutil.which("c++"))


def test_auto_dtype_fits_the_machine(monkeypatch):
  from msjax.ops import hardware
  assert hardware.compute_dtype("float32") == "float32"
  assert hardware.compute_dtype("bfloat16") == "bfloat16"
  with pytest.raises(ValueError, match="model.dtype"):
    hardware.compute_dtype("float16")
  monkeypatch.setattr(hardware, "cpu_isa", lambda: {"isa": "avx2", "model": "x", "flags": []})
  assert hardware.compute_dtype("auto") == "float32"
  monkeypatch.setattr(hardware, "cpu_isa", lambda: {"isa": "amx", "model": "x", "flags": []})
  assert hardware.compute_dtype("auto", conv_impl="fold") == "float32"
  expected = "bfloat16" if _onednn_installed() else "float32"
  assert hardware.compute_dtype("auto", conv_impl="onednn") == expected

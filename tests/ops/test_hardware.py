"""model.dtype=auto for the machine (msjax/ops/hardware.py)."""
import pytest

from conftest import onednn_installed


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
  expected = "bfloat16" if onednn_installed() else "float32"
  assert hardware.compute_dtype("auto", conv_impl="onednn") == expected


def test_an_isa_cap_makes_the_cpu_the_lesser_one(monkeypatch):
  from msjax.ops import hardware
  monkeypatch.setattr(hardware, "cpu_flags",
                      lambda: frozenset({"avx2", "avx512f", "avx512_bf16", "fma"}))
  assert hardware.cpu_isa({})["isa"] == "avx512_bf16"
  capped = {"XLA_FLAGS": "--xla_cpu_max_isa=AVX2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
  assert hardware.cpu_isa(capped)["isa"] == "avx2"
  assert hardware.cpu_isa(capped)["caps"] == {"ONEDNN_MAX_CPU_ISA": "avx2",
                                              "xla_cpu_max_isa": "avx2"}
  # either cap alone lowers it; the lowest wins; a cap above the CPU changes nothing
  assert hardware.cpu_isa({"ONEDNN_MAX_CPU_ISA": "avx512_core"})["isa"] == "avx512"
  assert hardware.cpu_isa({"XLA_FLAGS": "--xla_cpu_max_isa=AVX512 --foo",
                           "ONEDNN_MAX_CPU_ISA": "AVX2"})["isa"] == "avx2"
  assert hardware.cpu_isa({"ONEDNN_MAX_CPU_ISA": "AVX512_CORE_AMX"})["isa"] == "avx512_bf16"
  assert hardware.cpu_isa({"ONEDNN_MAX_CPU_ISA": "ALL"})["isa"] == "avx512_bf16"
  # so `auto` does not pick bf16 that the capped kernels would emulate
  monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
  assert not hardware.native_bf16_cpu()
  assert hardware.compute_dtype("auto", conv_impl="onednn") == "float32"


def test_thp_mode_reads_the_kernels_choice(tmp_path):
  from msjax.ops import hardware
  f = tmp_path / "enabled"
  f.write_text("always [madvise] never\n")
  assert hardware.thp_mode(str(f)) == "madvise"
  f.write_text("[always] madvise never\n")
  assert hardware.thp_mode(str(f)) == "always"
  assert hardware.thp_mode(str(tmp_path / "missing")) == ""

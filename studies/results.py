"""What every study writes at the top of its results file: when, on which CPU (and ISA), at which
commit and with which command, so that a figure can be traced and its staleness seen."""
from __future__ import annotations

import datetime
import os
import platform
import shlex
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def cpu() -> str:
  """'AMD EPYC (AVX2)': the model name and the widest vector ISA of this machine."""
  name, flags = platform.processor() or "unknown CPU", set()
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name") and name in ("", "unknown CPU", platform.processor()):
          name = line.split(":", 1)[1].strip()
        elif line.startswith("flags"):
          flags = set(line.split(":", 1)[1].split())
          break
  except OSError:
    pass
  isa = [label for flag, label in (("avx512f", "AVX-512"), ("avx512_bf16", "bf16"),
                                   ("amx_tile", "AMX")) if flag in flags]
  isa = isa or (["AVX2"] if "avx2" in flags else ["no AVX2"])
  return f"{name} ({' + '.join(isa)}), {os.cpu_count()} cores"


def commit() -> str:
  try:
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True, cwd=ROOT, check=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True, cwd=ROOT).stdout.strip()
    return head + (" (with uncommitted changes)" if dirty else "")
  except (OSError, subprocess.CalledProcessError):
    return "unknown"


def header(title: str, command: str | None = None, argv: list[str] | None = None) -> str:
  """The title, when, where and the command: this script with `argv` (a main(argv)'s arguments;
  None: this process's), quoted for a shell, so that pasted it writes the file again."""
  args = sys.argv[1:] if argv is None else list(argv)
  command = command or shlex.join([os.path.basename(sys.executable), sys.argv[0]] + args)
  now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
  return (f"# {title}\n\n_Generated {now} on {cpu()}, msjax at commit {commit()}, by_\n\n"
          f"```\n{command}\n```\n\n")


def write(path: str, text: str) -> str:
  """Atomically, as msjax writes its outputs."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)
  return path

"""What the `msjax` command says before any work: help on its modes and on one mode's fields, and
one-line refusals of command lines that cannot run (an unknown config or field).

The help is read from the configs themselves: a config's first docstring line says what the mode
does, and each field's comment in its file (or in msjax/config_base.py's shared blocks) is its
help, so there is no second copy to drift.
"""
from __future__ import annotations

import ast
import difflib
import importlib.util
import os
import re

PACKAGED_CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
EXAMPLES = (
    ("segment your scans (raw NIfTI, DICOM or BIDS; the shipped model)",
     "msjax --config=segment --config.input=path/to/exam_or_folder --workdir runs/seg"),
    ("follow a patient over visits (lesion change between two exams)",
     "msjax --config=longitudinal --config.input=path/to/patient_visits --workdir runs/long"),
    ("adapt a model to your own labelled exams (the shipped encoder, then fine-tuning)",
     "msjax --config=finetune --config.data.cohort=path/to/cohort "
     "--config.train.init_from=msjax-lesjak-encoder --config.train.freeze=0 --workdir runs/mine"),
)


def packaged_configs() -> list[str]:
  return sorted(n[:-3] for n in os.listdir(PACKAGED_CONFIGS)
                if n.endswith(".py") and not n.startswith("_"))


def _docstring(path: str) -> str:
  with open(path) as f:
    return ast.get_docstring(ast.parse(f.read())) or ""


def summary_line(name: str) -> str:
  """The first sentence of a packaged config's (or a config file's) docstring, on one line."""
  path = name if name.endswith(".py") else os.path.join(PACKAGED_CONFIGS, f"{name}.py")
  doc = " ".join(_docstring(path).split())
  first = re.split(r"(?<=\.)\s", doc, maxsplit=1)[0].rstrip(".:;")
  # the what, not the how: up to a colon that starts the usage, or a parenthesis, if long
  for cut in (": `", ": ", " ("):
    if len(first) > 90 and cut in first[20:]:
      first = first[:20 + first[20:].index(cut)]
  if len(first) > 100:
    first = first[:100].rsplit(" ", 1)[0] + " ..."
  return first


def usage() -> str:
  lines = ["msjax: multiple-sclerosis lesion segmentation in 3D MRI (JAX/Flax).", "",
           "usage: msjax --config=<mode>[:variant] [--config.<field>=<value> ...] "
           "[--workdir DIR]", "       msjax --config=<mode> --help   (that mode's fields)", "",
           "modes:"]
  names = packaged_configs()
  width = max(map(len, names))
  lines += [f"  {n:<{width}}  {summary_line(n)}" for n in names]
  lines += ["", "examples:"]
  for what, command in EXAMPLES:
    lines += [f"  # {what}", f"  {command}"]
  lines += ["", "Variants: ':smoke' (tiny, for tests), ':bf16' / ':f32' (compute dtype); "
            "README.md has the rest."]
  return "\n".join(lines)


_FIELD = re.compile(r"^\s*c(?:\.(\w+))?\.(\w+)\s*=\s*(.*?)\s*#\s*(.*)$")
_CONTINUED = re.compile(r"^\s+#\s*(.*)$")


_DEF = re.compile(r"^def (\w+)\(")


def field_comments(*paths: str) -> dict[str, str]:
  """{field: its comment} from `c.field = value  # comment` lines (comment lines right below
  continue it). In a shared-blocks file (config_base.py) a field is named by its function's
  name (`predict.overlap`); the first file naming a field wins."""
  out: dict[str, str] = {}
  for path in paths:
    last, block_of_def = None, None
    with open(path) as f:
      for line in f:
        d = _DEF.match(line)
        if d:
          block_of_def = d.group(1)
        m = _FIELD.match(line)
        if m:
          block, name, _, comment = m.groups()
          block = block or (block_of_def if path.endswith("config_base.py") else None)
          key = f"{block}.{name}" if block else name
          last = None
          if key not in out:
            out[key] = comment
            last = key
          continue
        c = _CONTINUED.match(line)
        if c and last and line.index("#") > 20:
          out[last] += " " + c.group(1)
        else:
          last = None
  return out


def flatten(config, prefix: str = "") -> dict:
  out = {}
  for key in sorted(config.keys()):
    value = config[key]
    if hasattr(value, "keys") and not isinstance(value, dict):
      out.update(flatten(value, f"{prefix}{key}."))
    else:
      out[f"{prefix}{key}"] = value
  return out


def load(path: str):
  """A config file's get_config(variant) for 'file.py[:variant]'."""
  file, _, variant = path.partition(":")
  spec = importlib.util.spec_from_file_location("msjax_cli_config", file)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(variant)


def config_help(path: str) -> str:
  """The fields of one mode's config with their defaults and help."""
  file = path.partition(":")[0]
  config = load(path)
  here = os.path.dirname(os.path.abspath(__file__))
  comments = field_comments(file, os.path.join(here, "config_base.py"),
                            os.path.join(here, "report", "__init__.py"))
  fields = flatten(config)
  variant = path.partition(":")[2]
  name = os.path.basename(file)[:-3] + (f":{variant}" if variant else "")
  lines = [f"msjax --config={name}: {summary_line(file)}", "",
           "fields (--config.<field>=<value>; defaults shown):"]
  width = min(max(map(len, fields)), 34)
  for key, value in fields.items():
    parts = key.split(".")
    text = comments.get(key) or comments.get(".".join(parts[-2:])) or ""
    shown = repr(value) if not isinstance(value, str) else f"'{value}'"
    lines.append(f"  {key:<{width}} = {shown}" + (f"   # {text}" if text else ""))
  return "\n".join(lines)


class BadCommandLine(ValueError):
  """A command line msjax refuses before doing anything; the message is one line."""


def check_overrides(argv: list[str], config_path: str) -> None:
  """Every --config.<field> on the command line names a field of the config: an unknown one is
  refused in one line, with the nearest field names."""
  fields = None
  for arg in argv[1:]:
    if not arg.startswith(("--config.", "-config.")):
      continue
    key = arg.split("=", 1)[0].split(".", 1)[1]
    if fields is None:
      fields = flatten(load(config_path))
    if key in fields or any(f.startswith(key + ".") for f in fields):
      continue
    near = difflib.get_close_matches(key, list(fields), n=3, cutoff=0.6)
    hint = f"; did you mean {' or '.join(near)}?" if near else ""
    raise BadCommandLine(f"--config.{key}: this config has no such field{hint} "
                         f"(msjax --config={os.path.basename(config_path.partition(':')[0])[:-3]}"
                         " --help lists them)")

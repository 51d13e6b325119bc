"""The lesion-transplant ablation on the Lesjak leave-one-out (issue 32): Dice per left-out patient
and input, with and without transplant, from leave_one_out runs' `leave_one_out.json`.

  python studies/lesion_transplant.py --with runs/loo_tp,runs/loo_tp_slab \\
      --without runs/loo_base --out docs/results/lesion_transplant.md

Each --with / --without (and --also NAME=..., repeatable: a further arm, e.g. a variant of the
transplant) is a comma-separated list of leave_one_out workdirs or their leave_one_out.json kept
elsewhere (their rows are merged: a later run's row for the same fold and method wins), a
results.md table of the same columns (e.g. an earlier model card's Results), or FILE#ARM, one arm
of a results file this script wrote (when the runs behind it are gone). Strategy 0CF; the FLAIR
threshold for reference.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import results  # noqa: E402

VARIANTS = ("all", "FLAIR+T1W", "FLAIR+T2W", "FLAIR", "slab5mm", "thick4mm")
FOLDS = ("patient07", "patient26")


def rows_of(sources: str) -> dict:
  """{(fold, method): row} from leave_one_out workdirs or results.md files."""
  out = {}
  for src in split_sources(sources):
    if run_file(src):
      with open(run_file(src)) as f:
        for r in json.load(f)["rows"]:
          out[(r["fold"], r["method"])] = r
    elif "#" in src:
      out.update(arm_of(*src.split("#", 1)))
    else:
      for line in open(src):
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) >= 8 and cells[0] in FOLDS:
          pct = lambda v: None if v == "undef" else float(v) / 100  # noqa: E731
          out[(cells[0], cells[1])] = {"dice": pct(cells[2]), "sensitivity": pct(cells[3]),
                                       "precision": pct(cells[4]), "lesion_f1": pct(cells[5]),
                                       "pred_volume_ml": float(cells[6])}
  return out


def split_sources(sources: str) -> list[str]:
  """The comma-separated sources of an arm; FILE#ARM is one source (an arm's name may hold a
  comma)."""
  return [sources] if "#" in sources else [s for s in sources.split(",") if s]


def run_file(src: str) -> str | None:
  """A source's leave_one_out.json (a workdir's or one kept elsewhere), None for a results file."""
  if src.endswith(".json"):
    return src
  return os.path.join(src, "leave_one_out.json") if os.path.isdir(src) else None


def wall_times(sources: str) -> dict:
  """{stage: seconds} of an arm's leave_one_out runs (none for results files); a resumed run's
  stages took ~0 s, so the longest of a stage's runs is the real one."""
  times = {}
  for src in split_sources(sources):
    if run_file(src):
      with open(run_file(src)) as f:
        stage_times = json.load(f).get("times_s", {})
      for k, v in stage_times.items():
        if k != "total":
          times[k] = max(v, times.get(k, 0.0))
  return times


def arm_of(path: str, arm: str) -> dict:
  """An arm of an earlier results file of this script (FILE#ARM: its 'ARM: Dice 07 | Dice 26 |
  mean Dice | lesion F1 26' columns): Dice per fold and patient26's lesion F1, 0CF."""
  out, col = {}, None
  pct = lambda v: None if v in ("–", "undef") else float(v.strip("*")) / 100  # noqa: E731
  for line in open(path):
    cells = [c.strip() for c in line.strip().strip("|").split("|")]
    if col is None and cells and cells[0] == "input":
      arms = [c[:-len(": Dice 07")] if c.endswith(": Dice 07") else None for c in cells]
      if arm not in arms:
        raise SystemExit(f"{path}: no arm '{arm}' (arms: {[a for a in arms if a]})")
      col = arms.index(arm)
    elif col is not None and cells and (cells[0] in VARIANTS or cells[0] == "FLAIR threshold"):
      m = cells[0] if cells[0] == "FLAIR threshold" else method(cells[0])
      out[(FOLDS[0], m)] = {"dice": pct(cells[col])}
      out[(FOLDS[1], m)] = {"dice": pct(cells[col + 1]), "lesion_f1": pct(cells[col + 3])}
  return out


def method(variant: str, strategy: str = "0CF") -> str:
  return strategy if variant == "all" else f"{strategy} [{variant}]"


def fmt(v) -> str:
  return "–" if v is None else f"{100 * v:.1f}"


def table(named: dict) -> str:
  lines = ["| input | " + " | ".join(
      f"{name}: Dice 07 | Dice 26 | mean Dice | lesion F1 26" for name in named) + " |",
           "| --- |" + " --- | --- | --- | --- |" * len(named)]
  for variant in VARIANTS + ("FLAIR threshold",):
    cells = []
    for rows in named.values():
      m = variant if variant == "FLAIR threshold" else method(variant)
      d = [rows.get((f, m), {}).get("dice") for f in FOLDS]
      mean = sum(d) / 2 if None not in d else None
      f1 = rows.get(("patient26", m), {}).get("lesion_f1")
      cells += [fmt(d[0]), fmt(d[1]), f"**{fmt(mean)}**" if mean is not None else "–", fmt(f1)]
    if any(c not in ("–", "**–**") for c in cells):
      lines.append(f"| {variant} | " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--with", dest="with_", required=True)
  p.add_argument("--without", required=True)
  p.add_argument("--out", default=os.path.join(results.ROOT, "docs", "results",
                                               "lesion_transplant.md"))
  p.add_argument("--also", action="append", default=[], help="NAME=SOURCES, a further arm")
  p.add_argument("--note", default="")
  p.add_argument("--title", default="Lesion transplant on the Lesjak leave-one-out (0CF, Dice %)")
  p.add_argument("--names", default="with transplant,without",
                 help="the column names of --with and --without")
  a = p.parse_args(argv)
  first, second = a.names.split(",", 1)
  arms = {first: a.with_, second: a.without}
  for arm in a.also:
    name, _, sources = arm.partition("=")
    arms[name] = sources
  named = {name: rows_of(sources) for name, sources in arms.items()}
  text = results.header(a.title, argv=argv)
  text += ("Left-out patient scores, 0CF fine-tuned on the other patient (800 steps where an "
           "arm does not say otherwise); "
           "`slab5mm` re-acquires every sequence as 5 mm 2D slices with a 1 mm gap by a simulator "
           "the training never used (`thick4mm` is the training's own augmentation).\n\n")
  text += table(named) + ("\n" + a.note + "\n" if a.note else "")
  for name, sources in arms.items():
    times = wall_times(sources)
    if times:
      text += f"\nWall time on 2 cores ({name}): " + ", ".join(
          f"{k} {v / 60:.1f} min" for k, v in times.items()) + "\n"
  print(text)
  results.write(a.out, text)
  print(f"-> {a.out}")


if __name__ == "__main__":
  main()

"""The paper's claim on real scans (issue 37): does the position-pretrained encoder, transferred
(0CF, nCF), beat training from scratch (VAN) on the Lesjak leave-one-out with msjax's defaults?

  python -m msjax.main --config configs/lesjak.py --workdir runs/loo_van \\
      --config.strategies=van --config.seed=0
  python studies/paper_claim.py --run 0:runs/loo_tp --run 0:runs/loo_van \\
      --out docs/results/paper_claim.md

Each --run is SEED:WORKDIR of a leave_one_out run (any strategies; the rows of one seed and
strategy may come from several runs, a later one winning), or SEED:FILE.json, a run's summary
kept by --keep; SEED:WORKDIR@LABEL names a variant of the recipe (a lever): its strategies are
reported as '0CF LABEL'. --keep DIR copies each run's rows and times into DIR/<run>.json, so that
the results file can be made again once the workdirs are gone. Per strategy and input variant: Dice
of each left-out patient, their mean per seed, and mean ± sd over seeds (the paper's Table 2
layout; sd over seeds of the two-fold mean); the transfer's gain over VAN per fold and seed; a
figure in the layout of the paper's Figure 4 (Dice per strategy, one point per fold and seed).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import results  # noqa: E402

VARIANTS = ("all", "FLAIR+T1W", "FLAIR+T2W", "FLAIR", "slab5mm")
ORDER = ("VAN", "0CF", "1CF", "2CF", "3CF", "6CF")


def split_method(method: str) -> tuple[str, str]:
  """'0CF [FLAIR+T1W]' -> ('0CF', 'FLAIR+T1W'); '0CF' -> ('0CF', 'all')."""
  if "[" in method:
    strategy, variant = method.split(" [", 1)
    return strategy, variant.rstrip("]")
  return method, "all"


def parse_run(arg: str) -> tuple[int, str, str]:
  """'SEED:PATH[@LABEL]' -> (seed, path, label)."""
  seed, _, rest = arg.partition(":")
  path, _, label = rest.partition("@")
  return int(seed), path, label


def load_run(path: str) -> dict:
  """A run's leave_one_out.json: from its workdir, or a summary file kept by --keep."""
  with open(path if path.endswith(".json") else os.path.join(path, "leave_one_out.json")) as f:
    return json.load(f)


def keep(runs: list[str], folder: str) -> None:
  """Each run's rows and times (no paths of this machine) as <folder>/<run name>.json."""
  os.makedirs(folder, exist_ok=True)
  for arg in runs:
    _, path, _ = parse_run(arg)
    if path.endswith(".json"):
      continue
    d = load_run(path)
    results.write(os.path.join(folder, os.path.basename(os.path.normpath(path)) + ".json"),
                  json.dumps({k: d[k] for k in ("rows", "times_s", "thresholds") if k in d},
                             indent=1) + "\n")


def strategy_key(name: str):
  base, _, label = name.partition(" ")
  return (ORDER.index(base), label)


def collect(runs: list[str]) -> dict:
  """{(strategy, variant, seed, fold): dice} from SEED:WORKDIR[@LABEL] arguments."""
  out = {}
  for arg in runs:
    seed, path, label = parse_run(arg)
    for r in load_run(path)["rows"]:
      strategy, variant = split_method(r["method"])
      if strategy in ORDER and r.get("dice") is not None:
        name = f"{strategy} {label}" if label else strategy
        out[(name, variant, seed, r["fold"])] = float(r["dice"])
  return out


def times(runs: list[str]) -> str:
  """Wall time per run and strategy on this machine: fine-tuning per fold, the predictions of
  every input variant, from each leave_one_out.json's times_s. A fold whose trained checkpoint
  was reused shows 'reused'; one resumed mid-training counts only the steps after resuming."""
  lines = ["| strategy | seed | run | fine-tuning per fold (min) | predictions, all variants (min) |",
           "| --- | --- | --- | --- | --- |"]
  for arg in runs:
    seed, path, label = parse_run(arg)
    t = load_run(path).get("times_s", {})
    for s in ORDER:
      tune = [v for k, v in t.items() if k.startswith("finetune ") and k.endswith(f" {s}")]
      pred = [v for k, v in t.items() if k.startswith("predict ") and f" {s}" in k]
      if tune or pred:
        lines.append(f"| {s} {label}".rstrip() + f" | {seed} | {path} | "
                     + ", ".join(f"{v / 60:.1f}" if v >= 60 else "reused" for v in tune)
                     + f" | {sum(pred) / 60:.1f} |")
  return "\n".join(lines) + "\n" if len(lines) > 2 else ""


def table(scores: dict) -> str:
  strategies = sorted({k[0] for k in scores}, key=strategy_key)
  folds = sorted({k[3] for k in scores})
  lines = ["| strategy | input | seeds | " + " | ".join(f"Dice {f}" for f in folds)
           + " | mean Dice ± sd over seeds |",
           "| --- | --- | --- |" + " --- |" * len(folds) + " --- |"]
  for variant in VARIANTS:
    for s in strategies:
      seeds = sorted({k[2] for k in scores if k[0] == s and k[1] == variant})
      seeds = [sd for sd in seeds if all((s, variant, sd, f) in scores for f in folds)]
      if not seeds:
        continue
      per_fold = [np.mean([scores[(s, variant, sd, f)] for sd in seeds]) for f in folds]
      means = [np.mean([scores[(s, variant, sd, f)] for f in folds]) for sd in seeds]
      spread = f" ± {100 * np.std(means, ddof=1):.1f}" if len(means) > 1 else " (one seed)"
      lines.append(f"| {s} | {variant} | {','.join(map(str, seeds))} | "
                   + " | ".join(f"{100 * v:.1f}" for v in per_fold)
                   + f" | **{100 * np.mean(means):.1f}**{spread} |")
  return "\n".join(lines) + "\n"


def gains(scores: dict, base: str = "VAN") -> str:
  """Transfer minus scratch, per variant, fold and seed where both were run."""
  lines = ["| strategy − VAN | input | per fold and seed (Dice points) | mean |",
           "| --- | --- | --- | --- |"]
  for s in sorted({k[0] for k in scores} - {base}, key=strategy_key):
    for variant in VARIANTS:
      pairs = sorted((k[2], k[3]) for k in scores if k[0] == s and k[1] == variant
                     and (base, variant, k[2], k[3]) in scores)
      if not pairs:
        continue
      d = [100 * (scores[(s, variant, sd, f)] - scores[(base, variant, sd, f)]) for sd, f in pairs]
      lines.append(f"| {s} | {variant} | "
                   + ", ".join(f"{f} s{sd}: {v:+.1f}" for (sd, f), v in zip(pairs, d))
                   + f" | **{np.mean(d):+.1f}** |")
  return "\n".join(lines) + "\n" if len(lines) > 2 else ""


def figure(scores: dict, path: str) -> str:
  """The paper's Figure 4 layout: Dice per strategy, one panel per input variant, one point per
  left-out patient and seed, the mean as a bar."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  strategies = sorted({k[0] for k in scores}, key=strategy_key)
  variants = [v for v in VARIANTS if any(k[1] == v for k in scores)]
  folds = sorted({k[3] for k in scores})
  fig, axes = plt.subplots(1, len(variants), figsize=(2.6 * len(variants), 3.4), sharey=True,
                           squeeze=False)
  markers = "os^vD"
  for ax, variant in zip(axes[0], variants):
    for i, s in enumerate(strategies):
      pts = {f: [scores[k] for k in scores if k[0] == s and k[1] == variant and k[3] == f]
             for f in folds}
      every = [v for vs in pts.values() for v in vs]
      if not every:
        continue
      ax.bar(i, np.mean(every), color="#c8d7e8", width=0.6)
      ax.text(i, np.mean(every) + 0.01, f"{100 * np.mean(every):.1f}", ha="center", fontsize=7)
      for j, f in enumerate(folds):
        ax.scatter([i + (j - 0.5) * 0.2] * len(pts[f]), pts[f], marker=markers[j % 5], s=18,
                   color="k", label=f if i == 0 else None, zorder=3)
    ax.set_xticks(range(len(strategies)), strategies)
    ax.set_title(variant, fontsize=9)
    ax.set_ylim(0, 1)
  axes[0][0].set_ylabel("Dice of the left-out patient")
  axes[0][0].legend(fontsize=7, loc="lower left")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--run", action="append", required=True, help="SEED:WORKDIR, repeatable")
  p.add_argument("--out", default=os.path.join(results.ROOT, "docs", "results",
                                               "paper_claim.md"))
  p.add_argument("--note", default="")
  p.add_argument("--title", default="The paper's claim on the Lesjak scans: transfer vs training "
                                    "from scratch")
  p.add_argument("--keep", default="", help="folder for each run's rows and times (JSON)")
  a = p.parse_args(argv)
  if a.keep:
    keep(a.run, a.keep)
  scores = collect(a.run)
  os.makedirs(os.path.dirname(os.path.abspath(a.out)), exist_ok=True)
  png = figure(scores, os.path.splitext(a.out)[0] + ".png")
  text = results.header(a.title, argv=argv)
  text += ("Leave-one-out 07 ↔ 26 with configs/lesjak.py's defaults (width 8, 800 fine-tuning "
           "steps, lesion transplant and robust training on); the encoder of 0CF/nCF is the "
           "shipped msjax-lesjak-encoder (600 steps of position pretraining on the six Lesjak "
           "scans)" + (", or, where a lever's note says so, one pretrained in the run" if any(
               parse_run(r)[2] for r in a.run) else "") + ". Dice in %.\n\n")
  text += table(scores) + "\n" + gains(scores)
  text += f"\n![Dice per strategy]({os.path.basename(png)})\n"
  text += "\nWall time on 2 cores, as each run recorded it:\n\n" + times(a.run)
  text += ("\n" + a.note + "\n") if a.note else ""
  print(text)
  results.write(a.out, text)
  print(f"-> {a.out}, {png}")


if __name__ == "__main__":
  main()

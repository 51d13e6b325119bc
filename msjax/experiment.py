"""`experiment` mode: the paper's Table 2 and Figure 4 on a cohort, by one command.

The paper's protocol: pretrain once on every non-test exam (no validation split there); then for
every repeat (seeded random sub-sampling of training/validation patients), label fraction and
strategy (VAN, 0CF, 1CF, 2CF, 3CF, 6CF): fine-tune, predict the test exams with each sampler
(the paper's 150 random brain patches first; the Gaussian sliding window may be reported
beside it), evaluate. Writes table2.md / table2.csv (mean Dice, sensitivity, precision and
lesion-wise F1 per strategy and sampler, each mean over the exams where the measure is defined),
figure4.png (box plots per strategy), results.csv (every exam of every run) and, with several
label fractions, dice_vs_fraction.png.
"""
from __future__ import annotations

import os
import time

import numpy as np
from absl import logging

from msjax import config_base, errors, figures, files, stages
from msjax.data import cohort as cohort_lib
from msjax.evaluate import metrics

MEASURES = stages.MEASURES
PAPER = {"VAN": (66.94, 60.63, 78.84), "0CF": (67.63, 61.47, 79.30), "1CF": (66.89, 59.79, 80.31),
         "2CF": (64.44, 57.50, 77.53), "3CF": (62.69, 55.86, 75.06), "6CF": (57.93, 49.60, 75.03)}


def run(config, workdir: str):
  t0 = time.time()
  cohort = cohort_lib.load_cohort(config.data.cohort or os.path.join(workdir, "cohort"))
  test_exams = [e for e in cohort.select(split="test") if e.reference]
  if not test_exams:
    raise errors.InvalidInputError(f"{cohort.root}: the experiment needs labelled exams with "
                                       "split 'test' (never trained on)")
  strategies = stages.strategy_names(config.strategies)
  fractions = config_base.parse_list(config.label_fractions, float)
  samplers = config_base.parse_list(config.samplers)
  unknown = sorted(set(samplers) - {"random", "sliding"})
  if not samplers or unknown:
    raise ValueError(f"samplers must list 'random' and/or 'sliding', got {config.samplers!r}")
  data = config_base.data(**dict(config.data.to_dict(), cohort=cohort.root))

  # pretraining sees every non-test exam: the validation split is fine-tuning's only
  pre_dir = os.path.join(workdir, "pretrain")
  stages.pretrain(config, config_base.data(**dict(data.to_dict(), val_fraction=0.0)), pre_dir)
  rows = []
  runs = [(r, f, s) for r in range(config.repeats) for f in fractions for s in strategies]
  for i, (repeat, fraction, strategy) in enumerate(runs):
    name = f"r{repeat}_f{fraction:g}_{strategy}"
    logging.info("[experiment] run %d/%d: %s", i + 1, len(runs), name)
    run_dir = os.path.join(workdir, "runs", name)
    d = config_base.data(**dict(data.to_dict(), split_repeat=repeat, label_fraction=fraction))
    stages.finetune(config, d, run_dir, strategy=strategy, init_from=pre_dir)
    for sampler in samplers:
      pred_dir = os.path.join(run_dir, f"predictions_{sampler}")
      stages.predict(run_dir, test_exams, pred_dir, stages.predict_options(config, sampler=sampler))
      summary = stages.evaluate(cohort, pred_dir, test_exams)
      for r in summary["exams"]:
        rows.append({"strategy": strategy, "sampler": sampler, "repeat": repeat,
                     "label_fraction": fraction,
                     **{k: r[k] for k in ("exam_id", "dice", "sensitivity", "precision",
                                          "lesion_f1", "lesion_sensitivity", "lesion_precision",
                                          "hd95_mm", "abs_volume_diff_ml")}})
  outputs = write_outputs(rows, strategies, fractions, workdir, samplers)
  print(open(outputs["table_md"]).read())
  print(f"[experiment] {len(runs)} fine-tuning runs in {time.time() - t0:.0f} s\n"
        + "\n".join(f"  {k}: {v}" for k, v in outputs.items()))
  return {"rows": rows, **outputs}


SAMPLER_NAMES = {"random": "150 random brain patches (paper)",
                 "sliding": "Gaussian sliding window"}


def table(rows, strategies, fraction, sampler):
  """Per strategy: the mean of each measure (%) over the exams where it is defined, and n."""
  out = []
  for s in strategies:
    sel = [r for r in rows if r["strategy"] == s and r["label_fraction"] == fraction
           and r["sampler"] == sampler]
    mean, n = metrics.mean_over_defined(sel, [k for k, _ in MEASURES])
    out.append({"strategy": s, "sampler": sampler, "n": len(sel),
                **{k: None if mean[k] is None else 100 * mean[k] for k, _ in MEASURES},
                **{f"{k}_n": n[k] for k, _ in MEASURES}})
  return out


def cell(row: dict, key: str, spec: str = ".2f") -> str:
  """A mean for a table: 'undef' when no exam defines it, '(n=k)' when fewer than all do."""
  if row[key] is None:
    return "undef"
  n = row.get(f"{key}_n", row["n"])
  return format(row[key], spec) + ("" if n == row["n"] else f" (n={n})")


def write_outputs(rows, strategies, fractions, workdir: str, samplers=("random",)) -> dict:
  full = max(fractions)
  tables = {s: table(rows, strategies, full, s) for s in samplers}
  results_csv = os.path.join(workdir, "results.csv")
  files.write_csv(rows, results_csv)
  table_csv = os.path.join(workdir, "table2.csv")
  files.write_csv([r for t in tables.values() for r in t], table_csv)
  md = []
  for sampler, t in tables.items():
    md += [f"Table 2, inference by {SAMPLER_NAMES[sampler]} (label fraction {full:g}; mean over "
           "test exams and repeats, %; paper values on MSSEG-2016 for reference)", "",
           "| strategy | Dice | Sensitivity | Precision | Lesion F1 | n | paper Dice / Sens / Prec |",
           "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in t:
      paper = PAPER.get(r["strategy"])
      md.append(f"| {r['strategy']} | " + " | ".join(cell(r, k) for k, _ in MEASURES)
                + f" | {r['n']} | " + (" / ".join(f"{v:.2f}" for v in paper) if paper else "-")
                + " |")
    md.append("")
  table_md = files.write_text("\n".join(md), os.path.join(workdir, "table2.md"))
  headline = [r for r in rows if r["sampler"] == samplers[0]]
  out = {"table_md": table_md, "table_csv": table_csv, "results_csv": results_csv,
         "figure4": figure4(headline, strategies, full, os.path.join(workdir, "figure4.png"))}
  if len(fractions) > 1:
    out["dice_vs_fraction"] = fraction_plot(headline, strategies, fractions,
                                            os.path.join(workdir, "dice_vs_fraction.png"))
  files.write_json({"tables": tables, "outputs": out}, os.path.join(workdir, "experiment.json"))
  return out


def figure4(rows, strategies, fraction, path):
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 3, figsize=(13, 4), sharey=True)
  for ax, (key, label) in zip(axes, MEASURES[:3]):
    data = [[100 * r[key] for r in rows if r["strategy"] == s and r["label_fraction"] == fraction
             and r[key] is not None] for s in strategies]
    ax.boxplot(data, medianprops={"color": "tab:orange"})
    ax.set_xticks(range(1, len(strategies) + 1), strategies)
    means = [np.mean(d) if d else np.nan for d in data]
    ax.plot(range(1, len(strategies) + 1), means, "k^", ms=5, label="mean")
    ax.set_title(f"{label} (%)  means: " + ", ".join(f"{m:.0f}" for m in means), fontsize=9)
    ax.grid(axis="y", alpha=0.3)
  axes[0].set_ylabel("% per test exam")
  axes[0].legend(fontsize=8)
  fig.suptitle("Figure 4: per-exam scores by transfer strategy (median in orange)")
  return figures.save_figure(fig, path)


def fraction_plot(rows, strategies, fractions, path):
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6, 4))
  for s in strategies:
    means = [100 * (metrics.mean_over_defined(
        [r for r in rows if r["strategy"] == s and r["label_fraction"] == f], ["dice"])[0]["dice"]
        or np.nan) for f in fractions]
    ax.plot([100 * f for f in fractions], means, "o-", label=f"{s} ({means[-1]:.1f})")
  ax.set_xlabel("labelled training patients used (%)")
  ax.set_ylabel("mean test Dice (%)")
  ax.set_title("How much does pretraining help when labels are scarce?")
  ax.legend(fontsize=8)
  ax.grid(alpha=0.3)
  return figures.save_figure(fig, path)

"""`experiment` mode: the paper's Table 2 and Figure 4 on a cohort, by one command.

Pretrain once; then for every repeat (seeded random sub-sampling of training/validation patients),
label fraction and strategy (VAN, 0CF, 1CF, 2CF, 3CF, 6CF): fine-tune, predict the test exams,
evaluate. Writes table2.md / table2.csv (mean Dice, sensitivity, precision and lesion-wise F1 per
strategy), figure4.png (box plots per strategy), results.csv (every exam of every run) and, with
several label fractions, dice_vs_fraction.png.
"""
from __future__ import annotations

import os
import time

import numpy as np
from absl import logging

from msjax import config_base, files
from msjax.data import cohort as cohort_lib
from msjax.evaluate import evaluate_mode
from msjax.infer import predict
from msjax.train import loop, optim, plots

MEASURES = (("dice", "Dice"), ("sensitivity", "Sensitivity"), ("precision", "Precision"),
            ("lesion_f1", "Lesion F1"))
PAPER = {"VAN": (66.94, 60.63, 78.84), "0CF": (67.63, 61.47, 79.30), "1CF": (66.89, 59.79, 80.31),
         "2CF": (64.44, 57.50, 77.53), "3CF": (62.69, 55.86, 75.06), "6CF": (57.93, 49.60, 75.03)}


def run(config, workdir: str):
  t0 = time.time()
  cohort = cohort_lib.load_cohort(config.data.cohort or os.path.join(workdir, "cohort"))
  test_exams = [e for e in cohort.select(split="test") if e.reference]
  if not test_exams:
    raise cohort_lib.InvalidInputError(f"{cohort.root}: the experiment needs labelled exams with "
                                       "split 'test' (never trained on)")
  strategies = [optim.strategy_name(s) for s in config_base.parse_list(config.strategies)]
  fractions = config_base.parse_list(config.label_fractions, float)
  data = config_base.data(**dict(config.data.to_dict(), cohort=cohort.root))

  pre_dir = os.path.join(workdir, "pretrain")
  loop.train(config_base.stage("pretrain", data, config.model, config.pretrain, config.seed),
             pre_dir)
  rows = []
  runs = [(r, f, s) for r in range(config.repeats) for f in fractions for s in strategies]
  for i, (repeat, fraction, strategy) in enumerate(runs):
    name = f"r{repeat}_f{fraction:g}_{strategy}"
    logging.info("[experiment] run %d/%d: %s", i + 1, len(runs), name)
    run_dir = os.path.join(workdir, "runs", name)
    d = config_base.data(**dict(data.to_dict(), split_repeat=repeat, label_fraction=fraction))
    ft = config_base.train(**dict(config.finetune.to_dict(), init_from=pre_dir,
                                  freeze="van" if strategy == "VAN" else strategy[:-2]))
    loop.train(config_base.stage("finetune", d, config.model, ft, config.seed), run_dir)
    predictor = predict.Predictor(run_dir, batch_size=config.predict.batch_size)
    pred_dir = os.path.join(run_dir, "predictions")
    predict.predict_cohort(predictor, test_exams, pred_dir, sampler=config.predict.sampler,
                           overlap=config.predict.overlap, n_random=config.predict.n_random,
                           seed=config.seed)
    summary = evaluate_mode.evaluate_predictions(cohort, pred_dir, exams=test_exams)
    for r in summary["exams"]:
      rows.append({"strategy": strategy, "repeat": repeat, "label_fraction": fraction,
                   **{k: r[k] for k in ("exam_id", "dice", "sensitivity", "precision",
                                        "lesion_f1", "lesion_sensitivity", "lesion_precision",
                                        "hd95_mm", "abs_volume_diff_ml")}})
  outputs = write_outputs(rows, strategies, fractions, workdir)
  print(open(outputs["table_md"]).read())
  print(f"[experiment] {len(runs)} fine-tuning runs in {time.time() - t0:.0f} s\n"
        + "\n".join(f"  {k}: {v}" for k, v in outputs.items()))
  return {"rows": rows, **outputs}


def table(rows, strategies, fraction):
  out = []
  for s in strategies:
    sel = [r for r in rows if r["strategy"] == s and r["label_fraction"] == fraction]
    out.append({"strategy": s, "n": len(sel), **{k: 100 * float(np.mean([r[k] for r in sel]))
                                                 for k, _ in MEASURES}})
  return out


def write_outputs(rows, strategies, fractions, workdir: str) -> dict:
  full = max(fractions)
  t = table(rows, strategies, full)
  results_csv = os.path.join(workdir, "results.csv")
  files.write_csv(rows, results_csv)
  table_csv = os.path.join(workdir, "table2.csv")
  files.write_csv(t, table_csv)
  md = [f"Table 2 (label fraction {full:g}; mean over test exams and repeats, %; paper values "
        "on MSSEG-2016 for reference)", "",
        "| strategy | Dice | Sensitivity | Precision | Lesion F1 | n | paper Dice / Sens / Prec |",
        "| --- | --- | --- | --- | --- | --- | --- |"]
  for r in t:
    paper = PAPER.get(r["strategy"])
    md.append(f"| {r['strategy']} | {r['dice']:.2f} | {r['sensitivity']:.2f} | "
              f"{r['precision']:.2f} | {r['lesion_f1']:.2f} | {r['n']} | "
              + (" / ".join(f"{v:.2f}" for v in paper) if paper else "-") + " |")
  table_md = files.write_text("\n".join(md) + "\n", os.path.join(workdir, "table2.md"))
  out = {"table_md": table_md, "table_csv": table_csv, "results_csv": results_csv,
         "figure4": figure4(rows, strategies, full, os.path.join(workdir, "figure4.png"))}
  if len(fractions) > 1:
    out["dice_vs_fraction"] = fraction_plot(rows, strategies, fractions,
                                            os.path.join(workdir, "dice_vs_fraction.png"))
  files.write_json({"table": t, "outputs": out}, os.path.join(workdir, "experiment.json"))
  return out


def figure4(rows, strategies, fraction, path):
  import matplotlib.pyplot as plt
  fig, axes = plt.subplots(1, 3, figsize=(13, 4), sharey=True)
  for ax, (key, label) in zip(axes, MEASURES[:3]):
    data = [[100 * r[key] for r in rows if r["strategy"] == s and r["label_fraction"] == fraction]
            for s in strategies]
    ax.boxplot(data, medianprops={"color": "tab:orange"})
    ax.set_xticks(range(1, len(strategies) + 1), strategies)
    means = [np.mean(d) for d in data]
    ax.plot(range(1, len(strategies) + 1), means, "k^", ms=5, label="mean")
    ax.set_title(f"{label} (%)  means: " + ", ".join(f"{m:.0f}" for m in means), fontsize=9)
    ax.grid(axis="y", alpha=0.3)
  axes[0].set_ylabel("% per test exam")
  axes[0].legend(fontsize=8)
  fig.suptitle("Figure 4: per-exam scores by transfer strategy (median in orange)")
  return plots.save_figure(fig, path)


def fraction_plot(rows, strategies, fractions, path):
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6, 4))
  for s in strategies:
    means = [100 * np.mean([r["dice"] for r in rows if r["strategy"] == s and
                            r["label_fraction"] == f]) for f in fractions]
    ax.plot([100 * f for f in fractions], means, "o-", label=f"{s} ({means[-1]:.1f})")
  ax.set_xlabel("labelled training patients used (%)")
  ax.set_ylabel("mean test Dice (%)")
  ax.set_title("How much does pretraining help when labels are scarce?")
  ax.legend(fontsize=8)
  ax.grid(alpha=0.3)
  return plots.save_figure(fig, path)

"""Figures of training runs (PNG, written atomically)."""
import matplotlib.pyplot as plt

from msjax.figures import save_figure


def loss_curve(history: list[dict], path: str, task: str) -> str:
  fig, ax = plt.subplots(figsize=(7, 4))
  steps = [r["step"] for r in history]
  losses = [r["loss"] for r in history]
  ax.plot(steps, losses, lw=0.6, color="tab:blue", alpha=0.45, label="training loss")
  window = max(1, len(losses) // 20)
  if window > 1:  # one batch is one exam: per-step losses are noisy, the trend is what matters
    smooth = [sum(losses[max(0, i - window + 1):i + 1]) / len(losses[max(0, i - window + 1):i + 1])
              for i in range(len(losses))]
    ax.plot(steps, smooth, lw=1.6, color="tab:blue", label=f"mean of last {window} steps")
  ax.set_xlabel("step")
  ax.set_ylabel("soft Dice loss" if task == "segmentation" else "position MSE")
  title = f"{task}: final loss {history[-1]['loss']:.4f}" if history else task
  if history and window > 1:
    title += f" (last-{window} mean {smooth[-1]:.4f})"
  key = "val_dice" if task == "segmentation" else "val_mse"
  val = [(r["step"], r[key]) for r in history if key in r]
  if val:
    ax2 = ax.twinx() if task == "segmentation" else ax
    ax2.plot(*zip(*val), "o-", color="tab:red", label=key.replace("_", " "))
    if task == "segmentation":
      ax2.set_ylabel("validation Dice")
      ax2.set_ylim(0, 1)
    base = [(r["step"], r["val_baseline_mse"]) for r in history if "val_baseline_mse" in r]
    if base:
      ax.plot(*zip(*base), "--", color="gray", label="predict-the-mean baseline")
    title += f", {key.replace('_', ' ')} {val[-1][1]:.4f}"
  ax.set_title(title)
  fig.legend(loc="upper right", bbox_to_anchor=(1, 1), bbox_transform=ax.transAxes, fontsize=8)
  return save_figure(fig, path)

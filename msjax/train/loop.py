"""`pretrain` / `finetune` modes: the training loop around the pure step (logging, validation,
checkpoints, preemption, a non-finite stop), built from msjax.train.state's create-and-restore.

`run(config, workdir)` trains the task of `config.mode` ("pretrain" = position regression,
"finetune" = segmentation). Resume order (state.restore_or_init): this workdir's latest
checkpoint, else `init_from` (encoder transfer, finetune only), else fresh initialisation.
"""
from __future__ import annotations

import json
import os
import signal
import time

import jax
from absl import logging

from msjax import checkpoint, files, parallel
from msjax.data import exams as exams_lib
from msjax.data import pipeline
from msjax.infer import bundle
from msjax.train import inputs, optim, plots
from msjax.train import state as state_lib
from msjax.train.validate import Validator

TASKS = {"pretrain": "position", "finetune": "segmentation"}
COLLAPSE_STEPS, COLLAPSE_GRAD_NORM = 50, 1e-4  # all-background collapse detector


class NonFiniteLossError(FloatingPointError):
  pass


class _Preemption:
  """SIGTERM (preemption) sets a flag; the loop saves a checkpoint and exits cleanly."""

  def __init__(self):
    self.requested = False
    self._old = None

  def __enter__(self):
    try:
      self._old = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread
      self._old = None
    return self

  def _handle(self, signum, frame):
    logging.warning("SIGTERM received: saving a checkpoint and stopping")
    self.requested = True

  def __exit__(self, *exc):
    if self._old is not None:
      signal.signal(signal.SIGTERM, self._old)


def _fmt_time(s: float) -> str:
  s = int(max(s, 0))
  return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def train(config, workdir: str, task: str | None = None) -> dict:
  """Trains config's task in workdir (resuming it), logging, validating and checkpointing."""
  task = task or TASKS[config.mode]
  tc = config.train
  main_process = parallel.is_main_process()
  mesh = parallel.data_mesh()
  os.makedirs(workdir, exist_ok=True)
  cohort = inputs.resolve_cohort(config, workdir)
  train_exams, val_exams = inputs.split_exams(cohort, task, config)
  inputs.check_exams(train_exams + val_exams, config.data.allow_any_geometry)
  logging.info("%s on %d training exams (%d patients), validating on %d exams: %s", task,
               len(train_exams), len({e.patient_id for e in train_exams}), len(val_exams),
               [e.exam_id for e in val_exams])

  setup = state_lib.create_train_state(config, task, mesh)
  train_step, frozen = setup.train_step, setup.frozen
  shape = inputs.model_shape(config)
  load = dict(model_shape=shape, patch_size=config.data.patch_size,
              allow_any_geometry=config.data.allow_any_geometry)
  cache = exams_lib.ExamCache(config.data.cache_exams, **load)
  spec = inputs.sampler_spec(config, task, jax.local_device_count(), jax.process_index())
  data_iter = pipeline.make_iterator(
      pipeline.make_dataset(train_exams, spec, cache, num_batches=tc.steps),
      num_threads=config.data.num_threads)
  validate = Validator(config, task, val_exams,
                       exams_lib.ExamCache(max(1, len(val_exams)), **load), setup.predict, mesh)

  mngr = checkpoint.manager(workdir, keep=tc.keep_checkpoints)
  best = checkpoint.manager(workdir, best=True) if task == "segmentation" else None
  meta = {"task": task, "mode": config.mode, "config": json.loads(config.to_json_best_effort())}
  state, start, transfer_report = state_lib.restore_or_init(setup, config, mngr, data_iter, mesh)
  global_patches = spec.batch_size * jax.process_count()
  logging.info("%s: %s parameters, strategy %s, %d frozen leaves; global batch %d = %d device(s) "
               "x %d exam(s) x %d patches of %d³ (%d process(es)); %d steps", task,
               f"{setup.n_params:,}",
               "pretrain" if task == "position" else optim.strategy_name(tc.freeze),
               len(frozen), global_patches, jax.device_count(), config.data.exams_per_batch,
               spec.patches_per_exam, spec.patch_size, jax.process_count(), tc.steps)

  rng = jax.random.PRNGKey(config.seed)
  schedule = optim.learning_rate(tc)
  metrics_path = os.path.join(workdir, "metrics.jsonl")
  history = _read_history(metrics_path, upto=start)
  if main_process:
    _write_history(metrics_path, history)
  t_start, step, last, collapsed = time.time(), start, {}, 0
  timed_steps, timed_time = 0, 0.0

  def save(step_now, val=None):
    checkpoint.save(mngr, step_now, state, data_iter.get_state(), dict(meta, step=step_now))
    if best is not None and val and "val_dice" in val:
      checkpoint.save(best, step_now, state, data_iter.get_state(), dict(meta, step=step_now),
                      metrics={"val_dice": val["val_dice"]})

  log_file = open(metrics_path, "a") if main_process else None
  with _Preemption() as preempt:
    while step < tc.steps:
      t0 = time.time()
      batch = parallel.global_batch(next(data_iter), mesh)
      state, m = train_step(state, batch, rng)
      m = {k: parallel.host(v) for k, v in m.items()}
      loss = float(m["loss"])  # one host sync per step: keeps the log honest and catches NaNs
      dt = time.time() - t0
      if step > start:  # the first step includes compilation
        timed_steps, timed_time = timed_steps + 1, timed_time + dt
      if not bool(m["finite"]):
        save(step)
        mngr.wait_until_finished()
        raise NonFiniteLossError(
            f"non-finite loss ({loss}) or gradient at step {step}; the update was not applied and "
            f"the last good state is saved in {mngr.directory}/{step}")
      # the rate this update used: the optimizer's count was `step` (updates before this one)
      record = {"step": step + 1, "loss": loss, "lr": float(schedule(step)),
                "grad_norm": float(m["grad_norm"])}
      step += 1
      if "dice" in m:
        record["batch_dice"] = float(m["dice"])
        collapsed = collapsed + 1 if (record["batch_dice"] == 0 and
                                      record["grad_norm"] < COLLAPSE_GRAD_NORM) else 0
        if collapsed == COLLAPSE_STEPS and main_process:
          logging.warning(
              "no lesion predicted for %d steps and the gradient has vanished (norm %.1e): the "
              "network has collapsed to all-background, where soft Dice goes flat. Use "
              "--config.train.loss=dice_bce and/or a lower --config.train.lr", COLLAPSE_STEPS,
              record["grad_norm"])
      val = {}
      if tc.eval_every and (step % tc.eval_every == 0 or step == tc.steps):
        val = validate(state["params"])
        record.update(val)
      if step % tc.log_every == 0 or step == tc.steps or val or step == start + 1:
        rate = global_patches * timed_steps / timed_time if timed_time else 0.0
        eta = (tc.steps - step) * (timed_time / timed_steps) if timed_steps else 0.0
        record["patches_per_s"] = rate
        extra = "  ".join(f"{k} {v:.4f}" for k, v in record.items()
                          if k in ("batch_dice", "val_dice", "val_mse", "val_baseline_mse"))
        if main_process:
          logging.info("step %d/%d  loss %.4f  %s  %.1f patches/s  ETA %s", step, tc.steps,
                       loss, extra, rate, _fmt_time(eta))
      if log_file:
        log_file.write(json.dumps(record) + "\n")
        log_file.flush()
      history.append(record)
      last = record
      stop = parallel.any_process(preempt.requested)  # every process stops at the same step
      if step % tc.checkpoint_every == 0 or step == tc.steps or val or stop:
        save(step, val)
      if stop:
        break
  if log_file:
    log_file.close()
  mngr.wait_until_finished()
  if best is not None:
    best.wait_until_finished()
  png = os.path.join(workdir, "loss_curve.png")
  if main_process:
    plots.loss_curve(history, png, task)
  summary = {"task": task, "workdir": os.path.abspath(workdir), "steps": step,
             "stopped_early": step < tc.steps, "final": last, "loss_curve": png,
             "checkpoints": mngr.directory.as_posix() if hasattr(mngr.directory, "as_posix")
             else str(mngr.directory), "wall_s": round(time.time() - t_start, 1),
             "transfer": transfer_report and {k: len(v) for k, v in transfer_report.items()},
             "frozen": frozen}
  mngr.close()
  if best is not None:
    best.close()
  if not main_process:
    return summary
  files.write_json(summary, os.path.join(workdir, "train_summary.json"))
  if task == "segmentation":  # the workdir is the model bundle segment reads
    bundle.write(workdir, config, train_exams, val_exams, summary)
  print(f"[{config.mode}] {step} steps in {summary['wall_s']} s; final "
        + ", ".join(f"{k} {v:.4f}" for k, v in last.items() if k not in ("step", "lr"))
        + f"\n  checkpoints: {summary['checkpoints']}\n  metrics: {metrics_path}\n  plot: {png}")
  return summary


def _read_history(path: str, upto: int) -> list[dict]:
  if not os.path.exists(path):
    return []
  with open(path) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  return [r for r in rows if r["step"] <= upto]


def _write_history(path: str, rows: list[dict]) -> None:
  """Rewrites the log up to the resumed step, so a resumed run does not duplicate lines."""
  files.write_text("".join(json.dumps(r) + "\n" for r in rows), path)


def run(config, workdir: str):
  return train(config, workdir)

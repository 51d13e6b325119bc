"""`pretrain` / `finetune` modes: the training loop around the pure step (logging, validation,
checkpoints, preemption, a non-finite stop), built from msjax.train.state's create-and-restore.

`run(config, workdir)` trains the task of `config.mode` ("pretrain" = position regression,
"finetune" = segmentation). Resume order (state.restore_or_init): this workdir's latest
checkpoint, else `init_from` (encoder transfer, finetune only), else fresh initialisation.
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
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


@dataclasses.dataclass
class Run:
  """What a training run works with, built once by `prepare` (flax imagenet's create-state and
  restore-or-init, plus the data, validation and checkpoint managers around them)."""
  config: object
  workdir: str
  task: str
  mesh: object
  setup: state_lib.TrainSetup
  train_exams: list
  val_exams: list
  data_iter: object
  validate: Validator
  mngr: object                  # checkpoints/ (the last N)
  best: object                  # best/ (by validation Dice), segmentation only
  meta: dict
  global_patches: int
  metrics_path: str
  state: dict = None
  start: int = 0
  transfer_report: dict | None = None
  t_start: float = 0.0          # when the loop began (wall time in the summary)

  def save(self, step: int, val: dict | None = None) -> None:
    meta = dict(self.meta, step=step)
    checkpoint.save(self.mngr, step, self.state, self.data_iter.get_state(), meta)
    if self.best is not None and val and "val_dice" in val:
      checkpoint.save(self.best, step, self.state, self.data_iter.get_state(), meta,
                      metrics={"val_dice": val["val_dice"]})


class Preempted(SystemExit):
  """Training stopped by SIGTERM after saving its checkpoint. The process exits (status 143, as
  a SIGTERM'd process does) instead of going on to the next stage (predicting, exporting) with an
  unfinished model; the same command resumes from the checkpoint."""


def train(config, workdir: str, task: str | None = None) -> dict:
  """Trains config's task in workdir (resuming it), logging, validating and checkpointing."""
  run = prepare(config, workdir, task or TASKS[config.mode])
  step, history = train_loop(run)
  summary = finish(run, step, history)
  if step < config.train.steps:  # only a preemption stops early (a non-finite loss raises)
    logging.warning("stopped by SIGTERM at step %d of %d; checkpoint saved in %s: run the same "
                    "command again to resume", step, config.train.steps, summary["checkpoints"])
    raise Preempted(143)
  return summary


def prepare(config, workdir: str, task: str) -> Run:
  """Inputs checked, state created and restored (or initialised), data and validation ready."""
  tc = config.train
  mesh = parallel.data_mesh()
  os.makedirs(workdir, exist_ok=True)
  cohort = inputs.resolve_cohort(config, workdir)
  train_exams, val_exams = inputs.split_exams(cohort, task, config)
  inputs.check_exams(train_exams + val_exams, config.allow_any_geometry)
  logging.info("%s on %d training exams (%d patients), validating on %d exams: %s", task,
               len(train_exams), len({e.patient_id for e in train_exams}), len(val_exams),
               [e.exam_id for e in val_exams])
  setup = state_lib.create_train_state(config, task, mesh)
  load = dict(model_shape=inputs.model_shape(config), patch_size=config.data.patch_size,
              allow_any_geometry=config.allow_any_geometry)
  spec = inputs.sampler_spec(config, task, jax.local_device_count(), jax.process_index())
  data_iter = pipeline.make_iterator(
      # each grid phase of an exam is an item of the cache: room for all of them
      pipeline.make_dataset(train_exams, spec,
                            exams_lib.ExamCache(config.data.cache_exams * spec.grid_phases,
                                                **load),
                            num_batches=tc.steps),
      num_threads=config.data.num_threads)
  run = Run(config=config, workdir=workdir, task=task, mesh=mesh, setup=setup,
            train_exams=train_exams, val_exams=val_exams, data_iter=data_iter,
            validate=Validator(config, task, val_exams,
                               exams_lib.ExamCache(max(1, len(val_exams)), **load),
                               setup.predict, mesh),
            # average_last: the checkpoints the final weights average stay until the end
            mngr=checkpoint.manager(workdir, keep=max(tc.keep_checkpoints, tc.average_last)),
            best=checkpoint.manager(workdir, best=True) if task == "segmentation" else None,
            meta={"task": task, "mode": config.mode,
                  "config": json.loads(config.to_json_best_effort()),
                  # what the network saw: each subset of sequences a training patch can have
                  "sequence_subsets": pipeline.trained_subsets(train_exams, spec)},
            global_patches=spec.batch_size * jax.process_count(),
            metrics_path=os.path.join(workdir, "metrics.jsonl"))
  run.state, run.start, run.transfer_report = state_lib.restore_or_init(setup, config, run.mngr,
                                                                        data_iter, mesh)
  logging.info("%s: %s parameters, strategy %s, %d frozen leaves; global batch %d = %d device(s) "
               "x %d exam(s) x %d patches of %d³ (%d process(es)); %d steps", task,
               f"{setup.n_params:,}",
               "pretrain" if task == "position" else optim.strategy_name(tc.freeze),
               len(setup.frozen), run.global_patches, jax.device_count(),
               config.data.exams_per_batch, spec.patches_per_exam, spec.patch_size,
               jax.process_count(), tc.steps)
  return run


class _Progress:
  """Per-step bookkeeping of the loop: throughput (the first step, which compiles, excluded),
  ETA, and the all-background collapse detector."""

  def __init__(self, start: int, steps: int, global_patches: int):
    self.start, self.steps, self.global_patches = start, steps, global_patches
    self.timed_steps, self.timed_time, self.collapsed = 0, 0.0, 0

  def timed(self, step: int, seconds: float) -> None:
    if step > self.start:
      self.timed_steps, self.timed_time = self.timed_steps + 1, self.timed_time + seconds

  def rate_and_eta(self, step: int) -> tuple[float, float]:
    if not self.timed_steps:
      return 0.0, 0.0
    return (self.global_patches * self.timed_steps / self.timed_time,
            (self.steps - step) * self.timed_time / self.timed_steps)

  def check_collapse(self, record: dict, main_process: bool) -> None:
    self.collapsed = self.collapsed + 1 if (record["batch_dice"] == 0 and
                                            record["grad_norm"] < COLLAPSE_GRAD_NORM) else 0
    if self.collapsed == COLLAPSE_STEPS and main_process:
      logging.warning(
          "no lesion predicted for %d steps and the gradient has vanished (norm %.1e): the "
          "network has collapsed to all-background, where soft Dice goes flat. Use "
          "--config.train.loss=dice_bce and/or a lower --config.train.lr", COLLAPSE_STEPS,
          record["grad_norm"])


def train_loop(run: Run) -> tuple[int, list[dict]]:
  """Steps from run.start to train.steps (or a preemption): (last step, metrics history)."""
  tc, main_process = run.config.train, parallel.is_main_process()
  rng = jax.random.PRNGKey(run.config.seed)
  schedule = optim.learning_rate(tc)
  history = _read_history(run.metrics_path, upto=run.start)
  if main_process:
    _write_history(run.metrics_path, history)
  progress, step = _Progress(run.start, tc.steps, run.global_patches), run.start
  run.t_start = time.time()
  log_file = open(run.metrics_path, "a") if main_process else None
  with _Preemption() as preempt:
    while step < tc.steps:
      t0 = time.time()
      batch = parallel.global_batch(next(run.data_iter), run.mesh)
      run.state, m = run.setup.train_step(run.state, batch, rng)
      m = {k: parallel.host(v) for k, v in m.items()}
      loss = float(m["loss"])  # one host sync per step: keeps the log honest and catches NaNs
      progress.timed(step, time.time() - t0)
      if not bool(m["finite"]):
        run.save(step)
        run.mngr.wait_until_finished()
        raise NonFiniteLossError(
            f"non-finite loss ({loss}) or gradient at step {step}; the update was not applied and "
            f"the last good state is saved in {run.mngr.directory}/{step}")
      # the rate this update used: the optimizer's count was `step` (updates before this one)
      record = {"step": step + 1, "loss": loss, "lr": float(schedule(step)),
                "grad_norm": float(m["grad_norm"])}
      step += 1
      if "dice" in m:
        record["batch_dice"] = float(m["dice"])
        progress.check_collapse(record, main_process)
      val = {}
      if tc.eval_every and (_every(step, tc.eval_every) or step == tc.steps):
        val = run.validate(run.state["params"])
        record.update(val)
      if _every(step, tc.log_every) or step == tc.steps or val or step == run.start + 1:
        _log_step(record, progress, main_process)
      if log_file:
        log_file.write(json.dumps(record) + "\n")
        log_file.flush()
      history.append(record)
      stop = parallel.any_process(preempt.requested)  # every process stops at the same step
      if _every(step, tc.checkpoint_every) or step == tc.steps or val or stop:
        run.save(step, val)
      if stop:
        break
  if log_file:
    log_file.close()
  return step, history


def _every(step: int, every: int) -> bool:
  """Is `step` one of every `every` steps; every <= 0: never (the last step is still logged,
  validated and checkpointed where those are on)."""
  return every > 0 and step % every == 0


def _log_step(record: dict, progress: _Progress, main_process: bool) -> None:
  rate, eta = progress.rate_and_eta(record["step"])
  record["patches_per_s"] = rate
  extra = "  ".join(f"{k} {v:.4f}" for k, v in record.items()
                    if k in ("batch_dice", "val_dice", "val_mse", "val_baseline_mse"))
  if main_process:
    logging.info("step %d/%d  loss %.4f  %s  %.1f patches/s  ETA %s", record["step"],
                 progress.steps, record["loss"], extra, rate, _fmt_time(eta))


def finish(run: Run, step: int, history: list[dict]) -> dict:
  """Waits for the last checkpoints, writes the loss curve, train_summary.json and (fine-tuning)
  the model bundle; returns the summary."""
  main_process = parallel.is_main_process()
  run.mngr.wait_until_finished()
  if run.best is not None:
    run.best.wait_until_finished()
  averaged = _average_last(run, step)
  png = os.path.join(run.workdir, "loss_curve.png")
  if main_process:
    plots.loss_curve(history, png, run.task)
  # a run resumed at its last step trains nothing: its final row is the history's, read back
  last = history[-1] if history and history[-1].get("step") == step else {}
  directory = run.mngr.directory
  summary = {"task": run.task, "workdir": os.path.abspath(run.workdir), "steps": step,
             "stopped_early": step < run.config.train.steps, "final": last, "loss_curve": png,
             "checkpoints": directory.as_posix() if hasattr(directory, "as_posix")
             else str(directory), "wall_s": round(time.time() - run.t_start, 1),
             "transfer": run.transfer_report and {k: len(v)
                                                  for k, v in run.transfer_report.items()},
             "frozen": run.setup.frozen, "averaged_steps": averaged}
  run.mngr.close()
  if run.best is not None:
    run.best.close()
  if not main_process:
    return summary
  files.write_json(summary, os.path.join(run.workdir, "train_summary.json"))
  if run.task == "segmentation" and not summary["stopped_early"]:  # the bundle segment reads
    bundle.write(run.workdir, run.config, run.train_exams, run.val_exams, summary)
  print(f"[{run.config.mode}] {step} steps in {summary['wall_s']} s; final "
        + ", ".join(f"{k} {v:.4f}" for k, v in last.items() if k not in ("step", "lr"))
        + f"\n  checkpoints: {summary['checkpoints']}\n  metrics: {run.metrics_path}"
        + f"\n  plot: {png}")
  return summary


def _average_last(run: Run, step: int) -> list[int] | None:
  """train.average_last > 1, the run finished: the mean of the params of its last average_last
  checkpoints into averaged/<step> (what find_checkpoint_dir then gives readers of the run);
  returns the steps averaged. A run with fewer checkpoints than asked averages those it has."""
  k = int(run.config.train.average_last)
  if step < run.config.train.steps:
    return None
  folder = os.path.join(run.workdir, checkpoint.AVERAGED)
  if k <= 1:
    if os.path.isdir(folder) and parallel.is_main_process():  # an earlier run's, not this one's
      logging.warning("removing %s: an average of an earlier run's checkpoints, which readers of "
                      "this workdir would take for this run's weights", folder)
      shutil.rmtree(folder)
    return None
  steps = sorted(s for s in run.mngr.all_steps() if s <= step)[-k:]
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding),
                          run.state["params"])
  params = checkpoint.average(run.mngr, steps, abstract)
  meta = dict(run.meta, step=step, averaged_steps=steps)
  with checkpoint.manager(run.workdir, folder=checkpoint.AVERAGED) as mngr:
    checkpoint.save(mngr, step, {"params": params, "opt_state": run.state["opt_state"]},
                    run.data_iter.get_state(), meta)
    mngr.wait_until_finished()
  logging.info("final weights: the mean of the params at steps %s -> %s/%d", steps, folder, step)
  return steps


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

"""pretrain / finetune: the training loop around the pure step.

`run(config, workdir)` trains the task of `config.mode` ("pretrain" = position regression,
"finetune" = segmentation). Resume order: this workdir's latest checkpoint, else `init_from`
(encoder transfer, finetune only), else fresh initialisation.
"""
from __future__ import annotations

import json
import os
import signal
import time

import jax
import numpy as np
from absl import logging

from msjax import files, parallel
from msjax.data import cohort as cohort_lib
from msjax.data import lesion_load, pipeline
from msjax.evaluate import metrics
from msjax.infer import sliding_window
from msjax.models import isensee
from msjax.train import checkpoint, optim, plots, steps, transfer

TASKS = {"pretrain": "position", "finetune": "segmentation"}
COLLAPSE_STEPS, COLLAPSE_GRAD_NORM = 50, 1e-4  # all-background collapse detector


class NonFiniteLossError(FloatingPointError):
  pass


def resolve_cohort(config, workdir: str) -> cohort_lib.Cohort:
  path = config.data.cohort or os.path.join(workdir, "cohort")
  return cohort_lib.load_cohort(path)


def model_shape(config):
  return tuple(config.data.model_shape) or None


def check_exams(exams):
  """Reads every file of every exam before training starts; one error lists all problems."""
  problems = []
  for exam in exams:
    _, found = cohort_lib.read_exam_files(exam)
    problems += [f"{exam.exam_id}: {p}" for p in found]
  if problems:
    raise cohort_lib.InvalidInputError("the cohort has problems:\n  " + "\n  ".join(problems))


def split_exams(cohort, task: str, config):
  """Training / validation exams: held-out patients by seeded repeated random sub-sampling.
  `split: test` exams are never used here."""
  pool = cohort.select(split="train", labelled=True if task == "segmentation" else None)
  if not pool:
    raise cohort_lib.InvalidInputError(
        f"{cohort.root}: no {'labelled ' if task == 'segmentation' else ''}training exam")
  patients = sorted({e.patient_id for e in pool})
  train_p, val_p = pipeline.split_patients(patients, config.data.val_fraction, config.seed,
                                           config.data.split_repeat)
  if task == "segmentation" and config.data.label_fraction < 1.0:
    # scarce labels: keep a seeded subset of the training patients (validation is unchanged)
    rng = np.random.default_rng([config.seed, config.data.split_repeat, 104729])
    n = max(1, int(round(config.data.label_fraction * len(train_p))))
    train_p = sorted(rng.permutation(train_p)[:n].tolist())
  return [e for e in pool if e.patient_id in train_p], [e for e in pool if e.patient_id in val_p]


def sampler_spec(config, task: str, local_devices: int = 1, process_index: int = 0
                 ) -> pipeline.SamplerSpec:
  """This process's share of the global batch: exams_per_batch groups per local device."""
  d = config.data
  local_groups = d.exams_per_batch * local_devices
  return pipeline.SamplerSpec(task=task, patch_size=d.patch_size,
                              patches_per_exam=d.patches_per_exam, exams_per_batch=local_groups,
                              group_offset=process_index * local_groups,
                              min_brain_fraction=d.min_brain_fraction, lesion_fraction=d.lesion_fraction,
                              modality_dropout=d.modality_dropout, ms_fraction=d.ms_fraction,
                              group_by=d.group_by, augment=d.augment,
                              intensity=d.intensity, lesion_load=lesion_load.LoadSpec(
                                  probability=d.lesion_load, added_ml=tuple(d.lesion_load_ml),
                                  max_grow=d.lesion_grow, contrast=tuple(d.lesion_contrast)),
                              seed=config.seed)


class Validator:
  """Validation on held-out patients. Segmentation: whole-volume sliding-window Dice per exam.
  Position: MSE on a fixed set of held-out patches, beside the predict-the-mean baseline."""

  def __init__(self, config, task, exams, cache, predict, mesh):
    self.task, self.exams, self.cache, self._predict, self.mesh = task, exams, cache, predict, mesh
    self.patch, self.batch = config.data.patch_size, config.data.infer_batch
    self.overlap = config.train.val_overlap
    if task == "position" and exams:
      spec = sampler_spec(config, task)
      ds = pipeline.make_dataset(exams, spec, cache, num_batches=4)
      self.fixed = [ds[i] for i in range(len(ds))]

  def __call__(self, params) -> dict:
    if not self.exams:
      return {}
    self.params = params
    if self.task == "position":
      preds = np.concatenate([self.predict(b["image"]) for b in self.fixed])
      target = np.concatenate([b["position"] for b in self.fixed])
      return {"val_mse": float(np.mean((preds - target) ** 2)),
              "val_baseline_mse": float(np.mean((target - target.mean(0)) ** 2))}
    rows = []
    for exam in self.exams:
      arrays = self.cache.get(exam)
      corners = sliding_window.sliding_window_corners(arrays.shape, self.patch, self.overlap,
                                                      brain=arrays.brain)
      pred = sliding_window.predict_volume(self.predict, arrays.images, corners, self.patch,
                                           self.batch)
      p = (pred.probability >= 0.5) & (arrays.brain > 0)
      rows.append(metrics.voxel_metrics(p, arrays.reference))
    # an exam with no lesion and no prediction has no Dice: it is left out, not counted as 1
    mean, n = metrics.mean_over_defined(rows, ["dice"])
    return {} if mean["dice"] is None else {"val_dice": mean["dice"], "val_exams": n["dice"]}

  def predict(self, x):
    """Every process runs the same replicated computation (a collective on a multi-host mesh)."""
    out = self._predict(self.params, parallel.replicate(np.asarray(x), self.mesh))
    return np.asarray(out.addressable_data(0))


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
  task = task or TASKS[config.mode]
  tc = config.train
  main_process = parallel.is_main_process()
  mesh = parallel.data_mesh()
  os.makedirs(workdir, exist_ok=True)
  cohort = resolve_cohort(config, workdir)
  train_exams, val_exams = split_exams(cohort, task, config)
  check_exams(train_exams + val_exams)
  logging.info("%s on %d training exams (%d patients), validating on %d exams: %s", task,
               len(train_exams), len({e.patient_id for e in train_exams}), len(val_exams),
               [e.exam_id for e in val_exams])

  model = steps.Model(isensee.constructor(task, config.model, seed=config.seed), seed=config.seed)
  params = model.init_params()
  n_params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(params))
  transfer_on, n_frozen = (False, 0) if task == "position" else optim.parse_strategy(tc.freeze)
  labels, frozen = optim.freeze_labels(params, n_frozen, tc.freeze_norms)
  tx = optim.make_optimizer(tc, labels)
  train_step = steps.make_train_step(model, task, tx, labels, tc.loss)
  predict = steps.make_predict(model, task)
  abstract = parallel.abstract_replicated(
      jax.eval_shape(lambda p: steps.init_state(p, tx), params), mesh)

  cache = cohort_lib.ExamCache(config.data.cache_exams, model_shape=model_shape(config),
                               patch_size=config.data.patch_size)
  spec = sampler_spec(config, task, jax.local_device_count(), jax.process_index())
  data_iter = pipeline.make_iterator(
      pipeline.make_dataset(train_exams, spec, cache, num_batches=tc.steps),
      num_threads=config.data.num_threads)
  validate = Validator(config, task, val_exams, cohort_lib.ExamCache(
      max(1, len(val_exams)), model_shape=model_shape(config), patch_size=config.data.patch_size),
      predict, mesh)

  mngr = checkpoint.manager(workdir, keep=tc.keep_checkpoints)
  best = checkpoint.manager(workdir, best=True) if task == "segmentation" else None
  meta = {"task": task, "mode": config.mode, "config": json.loads(config.to_json_best_effort())}
  start = mngr.latest_step()
  transfer_report = None
  if start is not None:  # 1. this workdir's latest checkpoint
    state, data_state, _ = checkpoint.restore(mngr, start, abstract)
    state["step"] = parallel.replicate(np.int32(start), mesh)
    data_iter.set_state(data_state)
    logging.info("resumed from %s at step %d", mngr.directory, start)
  else:
    if task == "segmentation" and transfer_on:  # 2. init_from: encoder transfer
      if not tc.init_from:
        raise ValueError(f"strategy {optim.strategy_name(tc.freeze)} transfers a pretrained "
                         "encoder: set --config.train.init_from=<pretraining workdir> "
                         "(or --config.train.freeze=van)")
      params, transfer_report = transfer.transfer_from_checkpoint(params, tc.init_from)
    # 3. fresh (VAN / pretraining); built on the host, then one identical copy per device
    state = parallel.replicate(jax.device_get(steps.init_state(params, tx)), mesh)
    start = 0
  global_patches = spec.batch_size * jax.process_count()
  logging.info("%s: %s parameters, strategy %s, %d frozen leaves; global batch %d = %d device(s) "
               "x %d exam(s) x %d patches of %d³ (%d process(es)); %d steps", task,
               f"{n_params:,}", "pretrain" if task == "position" else optim.strategy_name(tc.freeze),
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
      step += 1
      record = {"step": step, "loss": loss, "lr": float(schedule(step)),
                "grad_norm": float(m["grad_norm"])}
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

"""Validation during training, on held-out patients: whole-volume Dice of each exam segmented as
`predict` would with the config's predict block (segmentation), or the MSE of held-out patches
beside the predict-the-mean baseline (position)."""
from __future__ import annotations

import numpy as np

from msjax import parallel
from msjax.data import pipeline
from msjax.evaluate import metrics
from msjax.infer import predict as predict_lib
from msjax.train.inputs import sampler_spec


class Validator:
  """Validation on held-out patients. Segmentation: whole-volume Dice per exam, the exam segmented
  with the options of config.predict (sampler, overlap, batch size, mirroring, threshold, small
  lesions removed). Position: MSE on a fixed set of held-out patches, beside the
  predict-the-mean baseline. `predict` is the jitted network (mirrored when the options say so)."""

  def __init__(self, config, task, exams, cache, predict, mesh):
    self.task, self.exams, self.cache, self._predict, self.mesh = task, exams, cache, predict, mesh
    self.patch = config.data.patch_size
    if task == "segmentation":
      self.options = predict_lib.PredictOptions.from_config(
          config.predict, seed=config.seed, allow_any_geometry=config.allow_any_geometry)
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
      pred, _ = predict_lib.probabilities(self.predict, arrays, self.patch, self.options)
      mask = predict_lib.lesion_mask(pred.probability, 1e3 * arrays.grid.voxel_ml, self.options)
      rows.append(metrics.voxel_metrics(mask > 0, arrays.reference))
    # an exam with no lesion and no prediction has no Dice: it is left out, not counted as 1
    mean, n = metrics.mean_over_defined(rows, ["dice"])
    return {} if mean["dice"] is None else {"val_dice": mean["dice"], "val_exams": n["dice"]}

  def predict(self, x):
    """One batch split over the mesh's `data` axis (padded to a multiple of the devices), each
    device predicting its share; every process passes the same batch and gets the whole output
    (a collective on a multi-host mesh)."""
    x = np.asarray(x)
    pad = -len(x) % self.mesh.size
    if pad:
      x = np.concatenate([x, np.repeat(x[-1:], pad, 0)])
    out = self._predict(self.params, parallel.shard_batch(x, self.mesh))
    return np.asarray(out.addressable_data(0))[:len(x) - pad]

"""What a training run reads: its cohort, split into training and validation patients and checked
file by file before the first step, and the sampler spec of this process's share of a batch."""
from __future__ import annotations

import os

import numpy as np

from msjax import errors
from msjax.data import acquisition
from msjax.data import cohort as cohort_lib
from msjax.data import exams as exams_lib
from msjax.data import lesion_load
from msjax.data import transplant
from msjax.data import manifest as manifest_lib
from msjax.data import pipeline
from msjax.train import losses


def resolve_cohort(config, workdir: str) -> manifest_lib.Cohort:
  path = config.data.cohort or os.path.join(workdir, "cohort")
  return cohort_lib.load_cohort(path)


def model_shape(config):
  return tuple(config.data.model_shape) or None


def check_exams(exams, allow_any_geometry: bool = False):
  """Reads every file of every exam before training starts; one error lists all problems."""
  problems = []
  for exam in exams:
    _, found = exams_lib.read_exam_files(exam, allow_any_geometry)
    problems += [f"{exam.exam_id}: {p}" for p in found]
  if problems:
    raise errors.InvalidInputError("the cohort has problems:\n  " + "\n  ".join(problems))


def split_exams(cohort, task: str, config):
  """Training / validation exams: held-out patients by seeded repeated random sub-sampling.
  `split: test` exams are never used here."""
  pool = cohort.select(split="train", labelled=True if task == "segmentation" else None)
  if not pool:
    raise errors.InvalidInputError(
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
                              lesion_centring=d.lesion_centring,
                              modality_dropout=d.modality_dropout, ms_fraction=d.ms_fraction,
                              sequence_dropout=(d.sequence_dropout if task == "segmentation"
                                                else d.pretrain_sequence_dropout),
                              acquisition=acquisition.Spec(
                                  thick_slices=d.thick_slices, slice_mm=tuple(d.slice_mm),
                                  slice_gap=tuple(d.slice_gap), thick_exam=d.thick_exam,
                                  bias_field=d.bias_field, noise=d.noise),
                              group_by=d.group_by, augment=d.augment,
                              intensity=d.intensity, lesion_load=lesion_load.LoadSpec(
                                  probability=d.lesion_load, added_ml=tuple(d.lesion_load_ml),
                                  max_grow=d.lesion_grow, contrast=tuple(d.lesion_contrast)),
                              transplant=transplant.Spec(probability=d.transplant,
                                                         maps=d.lesion_maps,
                                                         maps_registration=(
                                                             d.lesion_maps_registration),
                                                         contrast=tuple(d.transplant_contrast)),
                              renormalise=d.renormalise,
                              grid_phases=d.grid_phases if task == "segmentation" else 1,
                              blob_labels=(task == "segmentation"
                                           and config.train.loss in losses.NEEDS_BLOBS),
                              seed=config.seed)

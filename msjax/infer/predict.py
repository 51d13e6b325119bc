"""`predict` mode: a trained checkpoint + a cohort (or a folder holding one exam) -> per exam, in the
exam's ORIGINAL voxel grid and affine, BIDS-derivative files (msjax/infer/outputs.py): a binary
lesion mask, the probability map, the per-voxel spread of the overlapping predictions, a lesion
table and an overlay figure; and a row (lesion count, volume in mL) of predictions.csv.

The network of a fine-tuning workdir is its best/ checkpoint (best validation Dice) when the run
validated, else its latest (msjax/checkpoint.find_checkpoint_dir); which one is logged and
recorded (predict.json, dataset_description.json).

Samplers: "sliding" (full coverage, overlap, Gaussian weighting; the default) or "random" (the
paper's N = 150 random patches in the brain, plain averaging, uncovered voxels no-lesion).
"""
from __future__ import annotations

import dataclasses
import os
import time

import jax
import numpy as np
from absl import logging
from ml_collections import config_dict

from msjax import checkpoint, config_base, errors, files
from msjax.data import cohort as cohort_lib
from msjax.data import exams as exams_lib
from msjax.data import lesions as lesions_lib
from msjax.data import manifest as manifest_lib
from msjax.data import mni, nifti
from msjax.infer import outputs, sliding_window
from msjax.models import isensee
from msjax.models import model as model_lib

SAMPLERS = ("sliding", "random")
FLIPS = ("all", "spread", "dealt")
PHASES = (1, 8)  # predict.phases: the model grid sampled once, or at its 8 half-voxel phases
PHASE_WINDOWS = ("all", "offset")  # predict.phase_windows: each phase's windows (config_base)
WINDOWS = ("touching", "central")  # predict.windows: which windows near the brain's edge (same)


@dataclasses.dataclass(frozen=True)
class PredictOptions:
  """How a trained network segments an exam: the fields of a config_base.predict() block (their
  meaning and defaults are there), the seed of the random sampler and the job's geometry switch.
  Built from a config by `from_config`; passed whole wherever an exam is segmented."""
  sampler: str
  overlap: float
  n_random: int
  threshold: float
  batch_size: int
  mirror: bool
  min_lesion_mm3: float
  min_lesion_peak: float = 0.0
  flips: str = "all"
  phases: int = 1
  phase_windows: str = "all"
  windows: str = "central"
  seed: int = 0
  allow_any_geometry: bool = False

  def __post_init__(self):
    if self.sampler not in SAMPLERS:
      raise ValueError(f"unknown sampler {self.sampler!r} (known: {', '.join(SAMPLERS)})")
    if self.flips not in FLIPS:
      raise ValueError(f"predict.flips={self.flips!r}: one of {', '.join(FLIPS)}")
    if self.phases not in PHASES:
      raise ValueError(f"predict.phases={self.phases!r}: 1 (the model grid as it is) or 8 (its "
                       "8 half-voxel phases)")
    if self.phase_windows not in PHASE_WINDOWS:
      raise ValueError(f"predict.phase_windows={self.phase_windows!r}: one of "
                       f"{', '.join(PHASE_WINDOWS)}")
    if self.phase_windows == "offset" and (self.phases == 1 or self.sampler != "sliding"):
      raise ValueError("predict.phase_windows='offset' shares one sliding window's windows out "
                       "over the 8 grid phases: it needs predict.phases=8 and "
                       "predict.sampler='sliding'")
    if self.windows not in WINDOWS:
      raise ValueError(f"predict.windows={self.windows!r}: one of {', '.join(WINDOWS)}")
    if self.phases > 1 and self.mirror and self.flips == "spread":
      raise ValueError("predict.phases=8 predicts each grid phase in one of the 8 flips; "
                       "predict.flips='spread' spreads them over the windows instead: use one")
    if self.flips == "spread" and self.sampler != "sliding":
      raise ValueError("predict.flips='spread' spreads the flips over the sliding window's "
                       "overlapping windows: it needs predict.sampler='sliding'")

  @property
  def mirror_every_patch(self) -> bool:
    """Whether every patch is seen in its 8 flips (nnU-Net's mirroring, 8x; dealt: by an
    ensemble's members together, 8 passes in all)."""
    return self.mirror and self.flips in ("all", "dealt")

  @classmethod
  def from_config(cls, predict_config=None, **changes) -> "PredictOptions":
    """The options of a predict block (default: config_base.predict()'s), with changes (seed,
    allow_any_geometry, ...); a flat predict-mode config carries seed and the switch itself."""
    config = predict_config if predict_config is not None else config_base.predict()
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{**{k: v for k, v in config.items() if k in names}, **changes})


def probabilities(predict_batch, arrays: exams_lib.ExamArrays, patch: int,
                  options: PredictOptions, flip=None, phase: int | None = None
                  ) -> tuple[sliding_window.Prediction, int]:
  """The lesion probability of every voxel of an exam on the model grid, by options' sampler
  (0 outside the brain), and the number of patches it took. flip: (3,) bool, every window
  mirrored along those axes (one grid phase's flip) instead of options' spread flips. phase: the
  grid phase predicted (phase_windows='offset': that phase's share of the windows)."""
  sigma = sliding_window.NNUNET_SIGMA
  if options.phase_windows == "offset" and phase is not None:  # (offset: the sliding sampler)
    corners = sliding_window.offset_window_corners(arrays.shape, patch, phase,
                                                   brain=arrays.brain)
    weighting, sigma = "gaussian", sliding_window.OFFSET_SIGMA
  elif options.sampler == "sliding":
    corners = sliding_window.sliding_window_corners(arrays.shape, patch, options.overlap,
                                                    brain=arrays.brain,
                                                    central=options.windows == "central")
    weighting = "gaussian"
  else:
    corners = sliding_window.random_brain_corners(arrays.brain, patch, options.n_random,
                                                  options.seed)
    weighting = "uniform"
  flips = (sliding_window.spread_flips(corners) if options.mirror and options.flips == "spread"
           else None)
  if flip is not None:
    flips = np.tile(np.asarray(flip, bool)[None], (len(corners), 1))
  pred = sliding_window.predict_volume(predict_batch, arrays.images, corners, patch,
                                       options.batch_size, weighting, flips, sigma)
  brain = arrays.brain > 0  # lesions are only sought in the brain
  pred.probability = np.where(brain, pred.probability, 0).astype(np.float32)
  pred.spread = np.where(brain, pred.spread, 0).astype(np.float32)
  return pred, len(corners)


def lesion_mask(probability: np.ndarray, voxel_mm3: float, options: PredictOptions) -> np.ndarray:
  """The binary mask (uint8): probability >= threshold, lesions of min_lesion_mm3 or less and
  lesions that nowhere reach min_lesion_peak removed."""
  return lesions_lib.mask_of(probability, voxel_mm3, options.threshold, options.min_lesion_mm3,
                             options.min_lesion_peak)


class Predictor:
  """A trained segmentation network with the data settings it was trained with."""

  def __init__(self, checkpoint_path: str):
    params, meta, where = checkpoint.restore_params(checkpoint_path)
    if meta.get("task") != "segmentation":
      raise ValueError(f"{where}: a {meta.get('task')} checkpoint cannot segment; give a "
                       "finetune workdir")
    cfg = config_dict.ConfigDict(meta["config"])
    self.where, self.train_config = where, cfg
    logging.info("network: %s (%s)", where,
                 f"the shipped model {meta['shipped']}" if meta.get("shipped") else
                 {checkpoint.BEST: "the best validation Dice",
                  checkpoint.AVERAGED: "the mean of the last checkpoints' weights"}.get(
                     os.path.basename(os.path.dirname(where)), "the latest checkpoint"))
    self.model = model_lib.Model(isensee.constructor("segmentation", cfg.model))
    # an ensemble (a shipped model of several members): their mean probability, one network
    # compiled and run member after member on the members' stacked parameters
    self.members = int(meta.get("members", 1))
    self._member_params = None
    if self.members > 1:
      from msjax import shipped
      members = [params] + shipped.restore_members(os.path.dirname(where), start=1)
      # stacked and kept apart in numpy: as jax ops, 108 leaves x 3 members of stacks and slices
      # are ~750 small compiled ops, seconds of an exam's start-up
      members = [jax.tree.map(np.asarray, m) for m in members]
      self._member_params = [jax.tree.map(jax.numpy.asarray, m) for m in members]
      params = jax.tree.map(lambda *leaves: np.stack(leaves), *members)
      logging.info("network: an ensemble of %d members (the mean of their probabilities)",
                   self.members)
    self.params = jax.tree.map(jax.numpy.asarray, params)
    self.patch = int(cfg.data.patch_size)
    self.model_shape = tuple(cfg.data.model_shape) or None
    self._predict = {}  # (mirror, dealt) -> jitted predict (mirroring: 8× the compute)

  def predict_batch(self, x, mirror: bool = False, dealt: bool = False):
    """dealt (an ensemble, with mirror): the 8 flips dealt out over the members
    (model.dealt_flips), 8 passes in all instead of 8 per member."""
    key = (mirror, dealt and mirror and self.members > 1)
    if key not in self._predict:
      self._predict[key] = model_lib.make_predict(self.model, "segmentation", mirror=mirror,
                                                  members=self.members, dealt=key[1])
    return self._predict[key](self.params, x)

  def predict_one_pass(self, x, member: int | None = None):
    """x in one pass, no mirroring: the ensemble's mean, or member `member` alone (one network
    compiled for a single member, given that member's parameters)."""
    if member is None or self.members == 1:
      return self.predict_batch(x)
    if "member" not in self._predict:
      self._predict["member"] = model_lib.make_predict(self.model, "segmentation")
    return self._predict["member"](self._member_params[member], x)

  def warm_up(self, options: PredictOptions) -> float:
    """Builds what the network of `options` runs on (on a machine's first run the oneDNN
    extension, ~15 s; XLA's compilation, ~1 s) with one batch of zeros; returns its seconds.
    segment does it while the first raw exam is preprocessed, so that neither lands in that
    exam's time. The same function and batch shape as segment_exam then calls: the grid
    phases' one pass (member 0's network for an ensemble with dealt flips), else predict_exam's."""
    t = time.time()
    x = np.zeros((options.batch_size,) + (self.patch,) * 3 + (len(manifest_lib.MODALITIES),),
                 np.float32)
    if options.phases > 1:
      out = self.predict_one_pass(x, phase_member(self, options, 0))
    else:
      out = self.exam_pass(options)(x)
    jax.block_until_ready(out)
    return time.time() - t

  def exam_pass(self, options: PredictOptions):
    """The batch function predict_exam runs (options' mirroring and flips)."""
    return lambda x: self.predict_batch(x, options.mirror_every_patch, options.flips == "dealt")

  def predict_exam(self, arrays: exams_lib.ExamArrays, options: PredictOptions):
    """(probabilities on the model grid, patches used): `probabilities` with this network."""
    return probabilities(self.exam_pass(options), arrays, self.patch, options)


def grid_phases(n: int) -> list[tuple]:
  """The model grid's sub-voxel phases, in model voxels: 1, the grid as it is; 8,
  nifti.half_voxel_phases (phase k predicted in flip k)."""
  return [(0.0, 0.0, 0.0)] if n == 1 else nifti.half_voxel_phases()


def phase_member(predictor, options: PredictOptions, k: int) -> int | None:
  """The ensemble member that predicts grid phase k (flips dealt: member k mod members), or None
  (the ensemble's mean, or the one network)."""
  return k % predictor.members if options.flips == "dealt" and predictor.members > 1 else None


def phased_probabilities(predictor: Predictor, arrays: exams_lib.ExamArrays, load,
                         options: PredictOptions, origin=(0.0, 0.0, 0.0), only=None
                         ) -> tuple[sliding_window.Prediction, int]:
  """Test-time grid phases: the exam sampled from its own finer grid onto the model grid moved by
  each of the 8 half-voxel phases (load(phase=...)), each phase predicted in one pass (in flip k
  with mirror: the 8 flips dealt over the phases; with flips='dealt', by member k of an ensemble
  in turn), each map brought back onto the exam's grid and averaged there. The compute of 8-flip
  mirroring; a lesion of a voxel or two is seen at 8 placements on the grid instead of one, so
  the mask moves far less when the exam lands on the grid a little differently (another
  registration, another visit). With options.phases=1, the one phase predicted as `options`
  says (mirroring included). origin: the whole model grid moved first (model voxels; `arrays`
  loaded at it): how the prediction moves with the grid (studies/grid_phases.py). only: the
  indices of the phases to predict (default all; studies/seed_ensemble.py deals them out over
  separate networks as an ensemble deals them over its members). With phase_windows='offset',
  phase k predicts only its share of one sliding window's windows (sliding_window.
  offset_window_corners) and the phases' maps are averaged by their windows' importance, so each
  voxel's 8 windows, one per phase, make its mean. Returns the prediction on the exam's own grid;
  its spread is the standard deviation over every window of every phase."""
  native = arrays.native_grid.shape
  total = np.zeros(native, np.float64)     # sum over the phases of (weight x) p
  total_sq = np.zeros(native, np.float64)  # ... of (weight x) (spread^2 + p^2)
  weight = np.zeros(native, np.float64)
  n_patches = 0
  phases = grid_phases(options.phases)
  taken = [k for k in range(len(phases)) if only is None or k in only]
  offset = options.phase_windows == "offset"  # (offset: phases=8, PredictOptions checks)
  for k in taken:
    phase = phases[k]
    at = tuple(float(o) + p for o, p in zip(origin, phase))
    moved = arrays if not any(phase) else load(phase=at)
    if options.phases == 1:
      pred, n = predictor.predict_exam(moved, options)
    else:
      flip = np.array([options.mirror and bool(k & bit) for bit in (1, 2, 4)])
      member = phase_member(predictor, options, k)
      pred, n = probabilities(lambda x, m=member: predictor.predict_one_pass(x, m), moved,
                              predictor.patch, options, flip=flip, phase=k)
    back = nifti.back_offset(at, moved.shape, native)
    if offset:  # each phase as much as its windows weigh at a voxel
      second = pred.weight * (pred.spread ** 2 + pred.probability ** 2)
      total += nifti.resample_box(pred.weight * pred.probability, native, offset=back)
      total_sq += nifti.resample_box(second, native, offset=back)
      weight += nifti.resample_box(pred.weight, native, offset=back)
    else:  # every phase the same
      p = nifti.resample_box(pred.probability, native, offset=back)
      spread = nifti.resample_box(pred.spread, native, offset=back)
      total += p
      total_sq += spread.astype(np.float64) ** 2 + p.astype(np.float64) ** 2
      weight += 1.0
    n_patches += n
  covered = weight > 0
  mean = np.where(covered, total / np.where(covered, weight, 1), 0.0)
  second = np.where(covered, total_sq / np.where(covered, weight, 1), 0.0)
  spread = np.sqrt(np.maximum(second - mean ** 2, 0.0))
  return sliding_window.Prediction(probability=mean.astype(np.float32),
                                   spread=spread.astype(np.float32), coverage=None), n_patches


def select_exams(cohort, which: str):
  if which in ("all", ""):
    return list(cohort.exams)
  if which in manifest_lib.SPLITS:
    return cohort.select(split=which)
  ids = [s.strip() for s in which.split(",")]
  return [cohort.by_id(i) for i in ids]


def in_file_space(exam, arrays: exams_lib.ExamArrays, volume: np.ndarray):
  """A model-grid volume -> (array in the voxel order of the file the exam's outputs go with,
  that file's affine, a function world mm -> MNI mm or None). A preprocessed exam goes back
  through the inverse of its MNI registration to the raw FLAIR's space; any other exam to its
  own grid."""
  native = nifti.resample_box(volume, arrays.native_grid.shape)
  if exam.native:
    from msjax.preprocess import native as native_lib  # the [preprocess] extra made this exam
    array, affine = native_lib.to_native(native, arrays.native_grid, exam.native)
    return array, affine, lambda points: native_lib.native_to_mni(points, exam.native)
  grid = arrays.native_grid
  array = nifti.to_source_orientation(native, grid)
  to_mni = (lambda points: points) if mni.is_mni_grid(array.shape, grid.source_affine) else None
  return array, grid.source_affine, to_mni


def flair_of(exam) -> str:
  """The image the overlay is drawn on: the raw FLAIR of a preprocessed exam, else its FLAIR
  (or its first image)."""
  if exam.native:
    return exam.native["reference"]
  return exam.images.get("FLAIR") or next(iter(exam.images.values()))


@dataclasses.dataclass
class Segmentation:
  """One exam segmented, in the voxel order and affine of the file its outputs go with."""
  probability: np.ndarray
  spread: np.ndarray           # spread of the overlapping patch predictions
  mask: np.ndarray             # uint8
  affine: np.ndarray
  to_mni: object               # world mm -> MNI mm, or None
  voxel_mm3: float
  patches: int


def segment_exam(predictor: Predictor, exam, options: PredictOptions, only=None) -> Segmentation:
  """Computes one exam's segmentation (nothing is written): loaded onto the model grid, predicted,
  brought back to the exam's own space, thresholded. only: the grid phases to predict
  (phased_probabilities; default all)."""
  load = exams_lib.exam_loader(exam, model_shape=predictor.model_shape,
                               patch_size=predictor.patch,
                               allow_any_geometry=options.allow_any_geometry)
  arrays = load()
  if options.phases > 1 and arrays.grid.shape != arrays.native_grid.shape:
    pred, n_patches = phased_probabilities(predictor, arrays, load, options, only=only)
  else:  # one phase; an exam stored on the model grid has no finer grid to take phases from
    if options.phases > 1:
      logging.info("%s is stored on the model grid %s: no finer grid to sample phases from, "
                   "predicted at its one placement", exam.exam_id, arrays.shape)
    pred, n_patches = predictor.predict_exam(arrays, options)
  prob, affine, to_mni = in_file_space(exam, arrays, pred.probability)
  spread, _, _ = in_file_space(exam, arrays, pred.spread)
  voxel_mm3 = abs(float(np.linalg.det(affine[:3, :3])))
  return Segmentation(probability=prob, spread=spread, mask=lesion_mask(prob, voxel_mm3, options),
                      affine=affine, to_mni=to_mni, voxel_mm3=voxel_mm3, patches=n_patches)


def export_exam(seg: Segmentation, exam, out_dir: str) -> dict:
  """Writes a segmentation's BIDS-derivative files (msjax/infer/outputs.py: mask, probability,
  uncertainty, lesion table, overlay); returns the exam's row (lesion count, volume, paths)."""
  out = outputs.paths(out_dir, exam)
  nifti.write_nifti(seg.mask, seg.affine, out["mask"], np.uint8)
  nifti.write_nifti(seg.probability, seg.affine, out["probseg"])
  nifti.write_nifti(seg.spread, seg.affine, out["uncertainty"])
  table = outputs.lesion_table(seg.mask, seg.probability, seg.affine, seg.to_mni)
  files.write_csv(table, out["table"], fieldnames=outputs.TABLE_COLUMNS)
  outputs.overlay_figure(flair_of(exam), out["mask"], out["overlay"], title=exam.exam_id)
  _, counted = lesions_lib.lesions(seg.mask, seg.voxel_mm3)
  return {"exam_id": exam.exam_id, "patient_id": exam.patient_id, "lesions": len(counted),
          "components": len(table),
          "volume_ml": round(float(seg.mask.sum()) * seg.voxel_mm3 / 1e3, 4),
          "patches": seg.patches, **out}


def predict_exam(predictor: Predictor, exam, out_dir: str,
                 options: PredictOptions | None = None) -> dict:
  """Segments one exam and writes its outputs (segment_exam, then export_exam); options default
  to config_base.predict()'s."""
  options = options or PredictOptions.from_config()
  t0 = time.time()
  row = export_exam(segment_exam(predictor, exam, options), exam, out_dir)
  return {**row, "sampler": options.sampler, "mirror": options.mirror, "phases": options.phases,
          "threshold": options.threshold, "seconds": round(time.time() - t0, 2)}


def predict_cohort(predictor: Predictor, exams, out_dir: str, options: PredictOptions, *,
                   log=logging.info) -> list[dict]:
  """Segments every exam into a BIDS-derivatives dataset at out_dir, with predictions.csv (one
  row per exam) and dataset_description.json. The first exam that fails stops the run (segment
  is the mode that reports a failing exam and goes on)."""
  os.makedirs(out_dir, exist_ok=True)
  prefixes = [e.bids_prefix for e in exams]
  clash = sorted({p for p in prefixes if prefixes.count(p) > 1})
  if clash:
    raise errors.InvalidInputError(f"exams would share output names {clash}: exam ids differing "
                                   "only in punctuation; rename them")
  outputs.write_description(out_dir, outputs.generated_by(predictor.where))
  rows, t_start = [], time.time()
  for i, exam in enumerate(exams):
    row = predict_exam(predictor, exam, out_dir, options)
    eta = (time.time() - t_start) / (i + 1) * (len(exams) - i - 1)
    log(f"[predict] {i + 1}/{len(exams)} {exam.exam_id}: {row['lesions']} lesions, "
        f"{row['volume_ml']:.2f} mL, {row['patches']} patches, {row['seconds']:.1f} s, "
        f"ETA {eta:.0f} s -> {os.path.dirname(row['mask'])}")
    rows.append(row)
  files.write_csv(rows, os.path.join(out_dir, "predictions.csv"))
  return rows


def run(config, workdir: str):
  if not config.checkpoint:
    raise ValueError("predict needs --config.checkpoint=<finetune workdir>")
  if not config.cohort:
    raise ValueError("predict needs --config.cohort=PATH (a manifest, a cohort folder, or a "
                     "folder with one exam's NIfTI files)")
  predictor = Predictor(config.checkpoint)
  cohort = cohort_lib.load_cohort(config.cohort)
  exams = select_exams(cohort, config.exams)
  if not exams:
    raise ValueError(f"no exam selected by exams={config.exams!r} in {cohort.root}")
  out_dir = os.path.join(workdir, "predictions")
  rows = predict_cohort(predictor, exams, out_dir, PredictOptions.from_config(config))
  files.write_json({"checkpoint": predictor.where, "cohort": cohort.root, "exams": rows},
                   os.path.join(out_dir, "predict.json"))
  print(f"[predict] {len(rows)} exam(s) from {predictor.where}: BIDS derivatives in {out_dir}/ "
        f"(sub-*/[ses-*/]anat/: lesion mask, probability, uncertainty, per-lesion table, "
        f"overlay PNG), one row per exam in {out_dir}/predictions.csv")
  return rows

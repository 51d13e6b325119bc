"""Trains the models msjax ships and writes them into the package (msjax/shipped/, package data):
pretraining on every scan in ../shared/data (the Lesjak MNI scans and the raw longitudinal exams
after preprocessing), fine-tuning 0CF on every labelled scan, with configs/lesjak.py's settings
(network, sampling, augmentation, steps: its defaults are the real-data defaults), then export
(msjax/release.py). From the repository root:

  python -m msjax.main --config configs/release.py --workdir runs/release

msjax-lesjak as shipped (2026-12-06, evening) was made with the shipped encoder, lesion pastes
z-scored again with their load (data.renormalise) and every sequence acquired as one 2D exam in a
quarter of the fine-tuning patches (data.thick_exam, data.slice_gap; both on in configs/lesjak.py),
its threshold and lesion peak chosen on three leave-one-out runs of that recipe
(configs/lesjak.py --config.strategies=0 --config.pretrained=msjax-lesjak-encoder
--config.model.dtype=float32 --config.finetune.steps=2400 --config.seed=0, 1 and 2, every
left-out exam at the 8 grid phases; docs/results/exam2d_ensemble.md):

  python -m msjax.main --config configs/release.py --config.pretrained=msjax-lesjak-encoder \
      --config.threshold_from=runs/loo_exam2d_s0_phases,runs/loo_exam2d_s1_phases,\
runs/loo_exam2d_s2_phases --workdir runs/release_exam2d

`:smoke` runs the whole path in about a minute on the synthetic cohort (tiny network, a few
steps) and exports into --config.out (required there, so that a smoke model never lands in the
package): `--config configs/release.py:smoke --config.out=/tmp/shipped --workdir /tmp/release`.
"""
import importlib.util
import os

from ml_collections import config_dict

from msjax import config_base


def _lesjak():
  """configs/lesjak.py beside this file (the lab's configs are not a package)."""
  spec = importlib.util.spec_from_file_location(
      "configs_lesjak", os.path.join(os.path.dirname(os.path.abspath(__file__)), "lesjak.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def get_config(variant: str = ""):
  v = config_base.variants(variant, "smoke")
  base = _lesjak().get_config("smoke" if "smoke" in v else "")
  c = config_dict.ConfigDict()
  c.mode = "release"
  c.seed = 0
  c.name = "msjax-lesjak"       # the segmentation model; its encoder is <name>-encoder
  c.out = ""                    # shipped-models folder ('' = the package's msjax/shipped/)
  c.labelled = base.labelled    # '' = the synthetic cohort (below)
  c.unlabelled_raw = base.unlabelled_raw
  c.unlabelled = base.unlabelled
  c.preprocess_labelled = base.preprocess_labelled  # see msjax/configs/leave_one_out.py
  c.strategy = "0"              # 0CF: the pretrained encoder, nothing frozen
  c.pretrained = ""             # '' = pretrain here; else that encoder (a pretraining workdir
                                # or a shipped encoder's name, shipped with the model as it is)
  # the compute dtype the shipped models run in, whatever they were trained in: 'auto' is
  # bfloat16 where the user's CPU has it (float32 training on an AVX2 machine must not hold every
  # user to float32); '' keeps the training's model.dtype
  c.shipped_dtype = "auto"
  # an ensemble of this many fine-tunings of the same recipe at seeds seed, seed + 1, ...: segment
  # averages their probabilities (one training is one draw from a wide spread: on the Lesjak
  # leave-one-out, 3 seeds' mean beat the seeds' mean Dice on every input,
  # docs/results/seed_ensemble.md)
  c.members = 3
  c.card_only = False           # True: write the shipped model's card again (its Results from
                                # card_results), no training, weights untouched
  # leave-one-out workdirs of this recipe, comma-separated, one per member seed: the threshold
  # (by mean Dice) and lesion peak (by mean lesion F1) of their averaged maps over the left-out
  # patients and every input ('' = predict.threshold, every lesion kept; msjax/evaluate/
  # ensemble.py)
  c.threshold_from = ""
  # markdown files (comma-separated) of measured figures for the model card's Results: the
  # recipe's leave-one-out at the shipped threshold and lesion peak (its seeds with the 8 grid
  # phases dealt over them as segment deals them, then each at all 8), the reliability of its
  # probabilities, the raw longitudinal exams' change
  # regions its masks cover and its masks there against the model released before and against
  # segment:fast; then the evidence behind the recipe: the 2D exams at one seed, the recipe
  # released before at the grid phases and what the phases do on the raw exams, that recipe at
  # its threshold and peak, renormalised pastes, the levers tried on its encoder, one
  # preprocessing, its 0CF initialisation and what was tried to widen it (issue 37), the
  # ensembles of the recipes before it, flips dealt over the members
  c.card_results = ",".join(f"docs/results/{name}.md" for name in (
      "exam2d_ensemble", "reliability", "raw_regions", "raw_exam2d", "exam2d_slices",
      "grid_phases", "raw_phases", "lesion_peak", "renormalise", "pre2400_levers",
      "shared_preprocessing", "paper_claim", "transfer_levers", "seed_ensemble", "dealt_flips"))
  c.synthetic = config_dict.ConfigDict(dict(n_ms=4, n_non_ms=2, shape=(40, 40, 40),
                                            spacing_mm=4.0))
  for block in ("preprocess", "data", "model", "pretrain", "finetune", "predict"):
    c[block] = config_dict.ConfigDict(base[block].to_dict())
  config_base.allow_any_geometry(c, base.allow_any_geometry)
  # the shipped recipe, as the leave-one-out measured it (docs/results/seed_ensemble.md,
  # 'pretraining ×4'): a 2400-step encoder (4x the lab's default) and float32 training
  c.pretrain.steps = 2400
  c.model.dtype = "float32"
  # three times the lab's fine-tuning (800 steps): on the leave-one-out it marked more of each
  # patient's lesions and raised mean Dice on the full-resolution inputs, though not on 5 mm
  # slabs (pre2400_levers.md)
  c.finetune.steps = 2400
  if "smoke" in v:  # the synthetic cohort at its own grid; out must be given
    c.card_results = ""
    c.shipped_dtype = ""        # the smoke model runs as it was trained (tests compare them)
    c.members = 1               # tests/test_shipped.py makes its two-member ensemble itself
    c.labelled = ""
    c.unlabelled_raw = ""
    c.preprocess_labelled = ""
    c.data.transplant = 0.0     # the synthetic brains are not on the lesion maps' MNI space
    c.data.renormalise = False  # nothing is pasted to z-score again
    c.out = config_dict.placeholder(str)
    c.data.update(dict(model_shape=(), patch_size=16, patches_per_exam=4, num_threads=1))
    c.pretrain.update(dict(steps=3, log_every=1, checkpoint_every=3))
    c.finetune.update(dict(steps=3, log_every=1, checkpoint_every=3))
    c.predict.batch_size = 8
  return config_base.finish(c, v)

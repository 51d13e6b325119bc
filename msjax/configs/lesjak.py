"""The method on real MRI: the Lesjak scans in ../shared/data (CC-BY), leave one patient out.

Pretrains on all six scans (patient07 and patient26 in MNI space, plus the four raw longitudinal
exams after configs/preprocess.py's pipeline has brought them to the same 128³ grid), fine-tunes
VAN and 0CF on one labelled patient, predicts the other in its original 182×218×182 space and
scores it beside a FLAIR threshold fitted on the training patient (results.md: Dice, sensitivity,
precision, lesion F1, predicted vs reference mL and the threshold of every row).

Defaults fit under an hour on a 2-core CPU (bf16 where the CPU has it) and were each measured on the
two folds (docs/lab_notebook.md, "Real data"): the paper's 32³ patches (a 2³ bottleneck; 16³ leaves
the deepest level a constant) at base width 8, 800 fine-tuning steps, half the patches centred on a
lesion, Dice + cross-entropy, nnU-Net scaling/mirroring/intensity augmentation, lesion-load
augmentation (real lesions of the training patient pasted, grown and contrast-scaled into white
matter of half the batches: one training patient carries 1.3 mL, the next patient may carry 50) and
test-time mirroring. The threshold stays 0.5, chosen before any left-out patient was seen: with
lesion-load augmentation the left-out patient's best threshold lies close to 0.5 on every fold and
strategy (calibration.png; docs/lab_notebook.md, "Calibration" under "Real data"; the current
figures: docs/results/reliability.md). The robust-training defaults of issue 21 (sequence dropout,
thick-slice / bias-field / noise augmentation; `data.sequence_dropout` and the fields after it) keep
most of the full exam's mean Dice with fewer sequences or thick slices, at a small cost on full
exams (docs/lab_notebook.md, "Robust defaults" under "Real data"; the current figures:
docs/results/lesion_transplant.md).
`:full` is the paper's method as the paper ran it (width 16, uniform patch sampling, soft Dice,
no augmentation, 150 random patches at inference) for a GPU. Paths are relative to where the
command runs (the repository root):

  python -m msjax.main --config configs/lesjak.py --workdir runs/lesjak
  python -m msjax.main --config configs/lesjak.py:full --workdir runs/lesjak_full   # GPU
"""
from ml_collections import config_dict

from msjax import config_base


def get_config(variant: str = ""):
  v = config_base.variants(variant, "full", "smoke")
  c = config_dict.ConfigDict()
  c.mode = "leave_one_out"
  c.seed = 0
  c.labelled = "../shared/data/lesjak_mni"                   # cohort with lesion masks
  c.unlabelled_raw = "../shared/data/lesjak_longitudinal_raw"  # raw exams: preprocessed first
  c.unlabelled = ""             # cohorts already on the model grid, added to pretraining (a,b)
  c.pretrained = ""             # '' = pretrain here; else that encoder (a pretraining workdir or
                                # a shipped encoder's name, e.g. msjax-lesjak-encoder: the release
                                # pretraining on the same six scans)
  c.folds = ""                  # patients to leave out ('' = every labelled patient)
  c.strategies = "van,0"
  # the left-out patient also as users have it (msjax/evaluate/variants.py): fewer sequences,
  # 2D acquisitions with 4 mm axial slices; scored as '<strategy> [<variant>]'
  c.input_variants = "all,FLAIR+T1W,FLAIR+T2W,FLAIR,slab5mm"
  c.figure_slices = 4
  c.preprocess = config_base.preprocess()
  c.data = config_base.data(patch_size=32, lesion_fraction=0.5, augment=True, intensity=True,
                            lesion_load=0.5, val_fraction=0.0)
  # lesion transplant (msjax/data/transplant.py): half the batches get the lesions of one of the
  # 27 lesion maps of the same database, in the training brain's own lesion look; lesion_load
  # pastes the training patient's own lesions into half of the others. The look's contrast is
  # kept as measured: scaling it per sequence by 0.6-1.4 (data.transplant_contrast) lowered the
  # leave-one-out's mean Dice on every input (docs/results/lesion_transplant.md)
  c.data.update(dict(transplant=0.5, lesion_maps="../shared/data/lesjak_lesion_maps"))
  # robust defaults (issue 21): the model must take FLAIR alone or with any other sequence, and
  # 2D thick-slice clinical scans of other scanners. Half the patches lose some or all of their
  # non-FLAIR sequences (FLAIR alone in 1/6 of all patches with the four Lesjak sequences), in
  # pretraining too; per channel, thick slices (2-6 mm, random axis), a bias field and noise.
  c.data.update(dict(sequence_dropout=0.5, pretrain_sequence_dropout=0.5, thick_slices=0.4,
                     bias_field=0.3, noise=0.15))
  c.model = config_base.model(base_width=8)
  c.pretrain = config_base.train(steps=600, log_every=25, eval_every=0, checkpoint_every=100)
  # Dice + cross-entropy: with soft Dice alone, one 0CF run here collapsed to "no lesion
  # anywhere" at step 8 and never recovered (gradient norm ~1e-7 for 790 steps)
  c.finetune = config_base.train(steps=800, log_every=25, eval_every=0, checkpoint_every=100,
                                 lr=1e-3, loss="dice_bce")
  c.predict = config_base.predict(batch_size=16, mirror=True)
  config_base.allow_any_geometry(c)
  if "full" in v:  # the paper's method as it ran: network, sampling, loss, inference (a GPU)
    c.data.update(dict(lesion_fraction=0.0, augment=False, intensity=False, lesion_load=0.0,
                       transplant=0.0,
                       sequence_dropout=0.0, pretrain_sequence_dropout=0.0, thick_slices=0.0,
                       bias_field=0.0, noise=0.0))
    c.model.base_width = 16
    c.pretrain.update(dict(steps=4000, checkpoint_every=500))
    c.finetune.update(dict(steps=4000, checkpoint_every=500, lr=5e-4, loss="dice"))
    c.predict.update(dict(sampler="random", mirror=False))
    c.strategies = "van,0,1,2,3,6"
  if "smoke" in v:  # plumbing only: tiny network, a few steps, no preprocessing
    c.unlabelled_raw = ""
    c.data.update(dict(model_shape=(64, 64, 64), patch_size=16, patches_per_exam=4, num_threads=1))
    c.predict.mirror = False
    c.model.base_width = 4
    c.pretrain.update(dict(steps=2, log_every=1, checkpoint_every=2))
    c.finetune.update(dict(steps=2, log_every=1, checkpoint_every=2))
    c.figure_slices = 2
    c.input_variants = "all,FLAIR"
  return config_base.finish(c, v)

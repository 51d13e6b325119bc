"""Leave one patient out on your labelled cohort, with the real-data recipe: pretrain, fine-tune
each strategy on all patients but one, segment the one left out (also with fewer sequences and as
a 2D acquisition) and score it beside a FLAIR threshold.

  msjax --config=leave_one_out --config.labelled=<cohort folder or manifest> --workdir runs/loo
      [--config.unlabelled_raw=<raw exams for pretraining>] [--config.pretrained=<encoder>]

Pretrains on every scan (the labelled ones, the raw unlabelled exams after configs/preprocess.py's
pipeline has brought them to the 128³ grid, any cohort in `unlabelled`), fine-tunes VAN and 0CF
on the other patients, predicts the left-out patient in its own space and scores it (results.md:
Dice, sensitivity, precision, lesion F1, predicted vs reference mL and the threshold of every
row; calibration.png; scores.png).

The recipe fits under an hour on a 2-core CPU for two patients (bf16 where the CPU has it): the
paper's 32³ patches (a 2³ bottleneck; 16³ leaves the deepest level a constant) at base width 8,
800 fine-tuning steps, half the patches centred on a lesion, Dice + cross-entropy, nnU-Net
scaling/mirroring/intensity augmentation, lesion-load augmentation (the training patients' own
lesions pasted, grown and contrast-scaled into white matter of half the batches: a training
patient may carry 1 mL, the next 50) and test-time mirroring. Lesion transplant (other patients'
lesion masks placed into the training brains, msjax/data/transplant.py) needs lesion maps on the
cohort's grid: `--config.data.transplant=0.5 --config.data.lesion_maps=<folder>`. The
robust-training defaults (sequence dropout, thick-slice / bias-field / noise augmentation;
`data.sequence_dropout` and the fields after it) train a model that takes FLAIR alone or with
any other sequence, and 2D thick-slice scans. `:full` is the paper's method as the paper ran it
(width 16, uniform patch sampling, soft Dice, no augmentation, 150 random patches at inference)
for a GPU. What each default did on the Lesjak scans (configs/lesjak.py in the repository):
docs/results/ and docs/lab_notebook.md, "Real data".
"""
from ml_collections import config_dict

from msjax import config_base


def get_config(variant: str = ""):
  v = config_base.variants(variant, "full", "smoke")
  c = config_dict.ConfigDict()
  c.mode = "leave_one_out"
  c.seed = 0
  c.labelled = ""              # cohort with lesion masks (a folder of exams or a manifest)
  c.unlabelled_raw = ""        # raw exams for pretraining: preprocessed first
  c.unlabelled = ""             # cohorts already on the model grid, added to pretraining (a,b)
  c.pretrained = ""             # '' = pretrain here; else that encoder (a pretraining workdir or
                                # a shipped encoder's name, e.g. msjax-lesjak-encoder)
  c.folds = ""                  # patients to leave out ('' = every labelled patient)
  # the labelled exams as given ('', on the model grid or its MNI box), or through msjax's
  # pipeline as a user's exam at segment: 'stripped' (already skull-stripped MNI-space exams:
  # MNI registration + Nyúl) or 'raw' (the whole pipeline); the left-out patient the same way
  c.preprocess_labelled = ""
  c.strategies = "van,0"
  # the left-out patient also as users have it (msjax/evaluate/variants.py): fewer sequences,
  # 2D acquisitions with 4 mm axial slices; scored as '<strategy> [<variant>]'
  c.input_variants = "all,FLAIR+T1W,FLAIR+T2W,FLAIR,slab5mm"
  c.figure_slices = 4
  c.preprocess = config_base.preprocess()
  c.data = config_base.data(patch_size=32, lesion_fraction=0.5, augment=True, intensity=True,
                            lesion_load=0.5, val_fraction=0.0)
  # lesion transplant (msjax/data/transplant.py) is off until lesion maps are given
  # (data.transplant, data.lesion_maps; configs/lesjak.py turns it on with the Lesjak maps)
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
  # the 8 grid phases of the left-out exam (its own 1 mm grid), each in one flip: the compute of
  # 8-flip mirroring, +1.2-2.3 mean Dice on the shipped recipe's seeds (docs/results/grid_phases.md)
  c.predict = config_base.predict(batch_size=16, mirror=True, phases=8)
  config_base.allow_any_geometry(c)
  if "full" in v:  # the paper's method as it ran: network, sampling, loss, inference (a GPU)
    c.data.update(dict(lesion_fraction=0.0, augment=False, intensity=False, lesion_load=0.0,
                       transplant=0.0,
                       sequence_dropout=0.0, pretrain_sequence_dropout=0.0, thick_slices=0.0,
                       bias_field=0.0, noise=0.0))
    c.model.base_width = 16
    c.pretrain.update(dict(steps=4000, checkpoint_every=500))
    c.finetune.update(dict(steps=4000, checkpoint_every=500, lr=5e-4, loss="dice"))
    c.predict.update(dict(sampler="random", mirror=False, phases=1))
    c.strategies = "van,0,1,2,3,6"
  if "smoke" in v:  # plumbing only: tiny network, a few steps, no preprocessing
    c.data.update(dict(model_shape=(64, 64, 64), patch_size=16, patches_per_exam=4, num_threads=1))
    c.predict.mirror = False
    c.predict.phases = 1  # the phased path: tests/infer/test_predict.py
    c.model.base_width = 4
    c.pretrain.update(dict(steps=2, log_every=1, checkpoint_every=2))
    c.finetune.update(dict(steps=2, log_every=1, checkpoint_every=2))
    c.figure_slices = 2
    c.input_variants = "all,FLAIR"
  return config_base.finish(c, v)

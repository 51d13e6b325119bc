"""The method on real MRI: the Lesjak scans in ../shared/data (CC-BY), leave one patient out.

Pretrains on all six scans (patient07 and patient26 in MNI space, plus the four raw longitudinal
exams after configs/preprocess.py's pipeline has brought them to the same 128³ grid), fine-tunes
VAN and 0CF on one labelled patient, predicts the other in its original 182×218×182 space and
scores it beside a FLAIR threshold fitted on the training patient.

Defaults fit about an hour on a 2-core CPU: base width 8 and 16³ patches (22.8 mm at the
1.42×1.70×1.42 mm grid) instead of the paper's 16 and 32³, several hundred steps, half the
patches centred on a lesion (a few mL of lesion in ~1.1 L of brain) and nnU-Net-style scaling,
mirroring and intensity augmentation (one training patient per fold). `:full` holds the
paper's settings for a GPU. Paths are relative to where the command runs (the repository root):

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
  c.folds = ""                  # patients to leave out ('' = every labelled patient)
  c.strategies = "van,0"
  c.figure_slices = 4
  c.preprocess = config_base.preprocess()
  c.data = config_base.data(patch_size=16, lesion_fraction=0.5, augment=True, val_fraction=0.0,
                            infer_batch=32)
  c.model = config_base.model(base_width=8)
  c.pretrain = config_base.train(steps=600, log_every=25, eval_every=0, checkpoint_every=100)
  # Dice + cross-entropy: with soft Dice alone, one 0CF run here collapsed to "no lesion
  # anywhere" at step 8 and never recovered (gradient norm ~1e-7 for 790 steps)
  c.finetune = config_base.train(steps=800, log_every=25, eval_every=0, checkpoint_every=100,
                                 lr=1e-3, loss="dice_bce")
  c.predict = config_base.predict(batch_size=32)
  if "full" in v:  # the paper's network and patches, for a GPU
    c.data.update(dict(patch_size=32, lesion_fraction=1 / 3))
    c.model.base_width = 16
    c.pretrain.update(dict(steps=4000, checkpoint_every=500))
    c.finetune.update(dict(steps=4000, checkpoint_every=500, lr=5e-4))
    c.strategies = "van,0,1,2,3,6"
  if "smoke" in v:  # plumbing only: tiny network, a few steps, no preprocessing
    c.unlabelled_raw = ""
    c.data.update(dict(model_shape=(64, 64, 64), patches_per_exam=4, num_threads=1))
    c.model.base_width = 4
    c.pretrain.update(dict(steps=2, log_every=1, checkpoint_every=2))
    c.finetune.update(dict(steps=2, log_every=1, checkpoint_every=2))
    c.figure_slices = 2
  return config_base.finish(c, v)

"""The method on real MRI: the Lesjak scans in ../shared/data (CC-BY), leave one patient out.

The packaged leave-one-out recipe (msjax/configs/leave_one_out.py) on the lab's data: the two
labelled Lesjak patients (patient07, patient26 in MNI space), pretraining on them and the four raw
longitudinal exams (preprocessed by msjax's pipeline first), and lesion transplant from the 27
lesion maps of the same database (half the batches get one donor's lesions in the training
brain's own lesion look, z-scored again with them in; the look's contrast kept as measured:
scaling it per sequence by 0.6-1.4, data.transplant_contrast, lowered the mean Dice on every
input, docs/results/transplant_contrast.md). Paths are relative to where the command runs (the repository root):

  python -m msjax.main --config configs/lesjak.py --workdir runs/lesjak
  python -m msjax.main --config configs/lesjak.py --config.pretrained=msjax-lesjak-encoder \
      --config.strategies=van,0 --workdir runs/loo      # the shipped encoder, no pretraining
  python -m msjax.main --config configs/lesjak.py:full --workdir runs/lesjak_full   # GPU
"""
from msjax import config_base
from msjax.configs import leave_one_out

DATA = "../shared/data"


def get_config(variant: str = ""):
  v = config_base.variants(variant, "full", "smoke")
  c = leave_one_out.get_config(variant)
  c.labelled = f"{DATA}/lesjak_mni"
  if "smoke" not in v:  # the smoke variant is plumbing only: no preprocessing
    c.unlabelled_raw = f"{DATA}/lesjak_longitudinal_raw"
  c.data.lesion_maps = f"{DATA}/lesjak_lesion_maps"
  if "full" not in v:  # the paper's method had no augmentation
    c.data.transplant = 0.5
    # a batch given a donor's lesions is z-scored again with them in, as the loader z-scores an
    # exam that carries them: heavy loads in training look as they do at inference (on the
    # leave-one-out, 3 seeds paired: docs/results/renormalise.md)
    c.data.renormalise = True
    # every sequence acquired as one 2D exam (thick slices, a random gap) in a quarter of the
    # patches: on the leave-one-out, 3 seeds averaged, mean Dice rose on every input, 5 mm slabs
    # most (docs/results/exam2d_ensemble.md); runs before 2026-12-06 had it off
    c.data.thick_exam = 0.25
    c.data.slice_gap = (0.0, 0.3)
  return c

"""Lesion change between two visits of one patient (issue 22).

The follow-up is registered rigidly to the baseline in the patient's own space (no MNI), the two
FLAIRs are intensity-matched inside the brain and subtracted (the classic subtraction approach:
Ganiler et al., Neuroradiology 2014; the approach the Lesjak longitudinal database was built to
validate: Lesjak et al., Neuroinformatics 2016), the difference is divided by what noise and
residual misalignment explain at each voxel, and a change is a cluster that is significant on
FLAIR alone or on FLAIR and T2 together, lesion-like at the visit where it is lesion, and away
from the brain border. Each changed lesion is then classed new / enlarging / stable / shrinking /
disappearing by its volumes at the two visits (rule in `change.py`).

  align.py    SimpleITK: N4, brain mask, rigid registration, the decision grid, resampling
  change.py   numpy: intensity matching, the change z-map, the change mask, lesion classes
  scores.py   change scores (MSSEG-2016 lesion rule of msjax.evaluate.metrics), reference mapping
  naive.py    the baseline to beat: two independent FLAIR-threshold segmentations, differenced
  run.py      run_patient: one patient's two visits -> change mask, class map, lesion table
  pairs.py    the visit pairs of the mode's input (two exams per patient)
  mode.py     the `longitudinal` mode: per patient, segmentation of both visits when a model is
              given, run_patient, BIDS-derivative outputs, overlay (figure.py), cohort CSV
  evaluate.py `evaluate --config.change_reference=DIR`: a longitudinal run's change maps scored

The studies on the Lesjak longitudinal database (its pairs against their reference change masks,
the image evidence of change, the raw-exam change regions) are in the repository's studies/
(lesjak_longitudinal.py, change_evidence.py, change_regions.py), not in the package.
"""

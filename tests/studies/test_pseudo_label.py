"""Self-training's labels (studies/pseudo_label.py): the unlabelled exams masked by the mean of
the fold's teachers, by the one mask rule, on their own grid, in a manifest beside the real
labelled exams under one patient id."""
import os

import nibabel as nib
import numpy as np

from conftest import finetune_smoke
from msjax.data import cohort as cohort_lib
from msjax.data import lesions
from msjax.infer import outputs
from studies import pseudo_label


def _teacher(run_dir, fold, network):
  folder = os.path.join(run_dir, "folds", f"test_{fold}")
  os.makedirs(folder)
  os.symlink(network, os.path.join(folder, "0CF"))
  return str(run_dir)


def test_unlabelled_exams_get_the_mean_teacher_s_mask_beside_the_labelled(
    tiny_cohort, trained, tmp_path):
  other = str(tmp_path / "other_network")
  finetune_smoke(tiny_cohort, other, **{"train.steps": 3, "seed": 1})
  teachers = [_teacher(tmp_path / "loo_s0", "synth003", trained),
              _teacher(tmp_path / "loo_s1", "synth003", other)]
  out = str(tmp_path / "pseudo")
  assert pseudo_label.main(["--fold", "synth003", "--teachers", ",".join(teachers), "--exams",
                            tiny_cohort.root, "--labelled", tiny_cohort.root, "--out", out,
                            "--threshold", "0.3", "--min-lesion-peak", "0.4"]) == 0
  cohort = cohort_lib.load_cohort(os.path.join(out, "cohort.json"))
  pseudo = [e for e in cohort.exams if e.patient_id == pseudo_label.PSEUDO_PATIENT]
  unlabelled = tiny_cohort.select(labelled=False)
  assert sorted(e.exam_id for e in pseudo) == sorted(e.exam_id for e in unlabelled)
  # the real labelled exams are there as they were, with their own masks
  real = {e.exam_id: e for e in cohort.exams if e.patient_id != pseudo_label.PSEUDO_PATIENT}
  assert {i: e.consensus for i, e in real.items()} == {
      e.exam_id: e.consensus for e in tiny_cohort.select(labelled=True)}
  maps_differ = False
  for exam in pseudo:
    assert exam.labelled and exam.split == "train"
    flair = nib.load(exam.images["FLAIR"])
    mask = nib.load(exam.consensus)
    assert mask.shape == flair.shape and np.allclose(mask.affine, flair.affine)
    maps = [np.asarray(nib.load(outputs.paths(os.path.join(out, "teachers", f"seed{k}"),
                                              exam)["probseg"]).dataobj, np.float32)
            for k in range(2)]
    maps_differ |= not np.allclose(maps[0], maps[1])
    voxel_mm3 = float(np.prod(flair.header.get_zooms()[:3]))
    expected = lesions.mask_of((maps[0] + maps[1]) / 2, voxel_mm3, 0.3, min_lesion_peak=0.4)
    np.testing.assert_array_equal(np.asarray(mask.dataobj), expected)
    assert 0 < expected.sum() < expected.size  # a mask, neither empty nor everything
  assert maps_differ  # two teachers, two maps: the mask is their mean's

"""NIfTI files for the data tests: images, exam folders, a small BIDS dataset, and the
InvalidInputError check they share."""
import os

import nibabel as nib
import numpy as np
import pytest

from msjax.errors import InvalidInputError


def nii(path, data=None, affine=None):
  path.parent.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(len(str(path)))
  data = rng.random((40, 40, 40)).astype(np.float32) + 1 if data is None else data
  nib.save(nib.Nifti1Image(data, np.diag([4.0, 4.0, 4.0, 1.0]) if affine is None else affine),
           str(path))
  return str(path)


def bids_dataset(root):
  """Two subjects; sub-01 with two sessions, a contrast T1, two FLAIR runs, an acq- entity, a
  lesion mask derivative and a label map with its tsv; sub-02 with an unknown suffix."""
  anat = root / "sub-01" / "ses-01" / "anat"
  nii(anat / "sub-01_ses-01_T1w.nii.gz")
  nii(anat / "sub-01_ses-01_ce-gadolinium_T1w.nii.gz")
  nii(anat / "sub-01_ses-01_acq-3D_run-1_FLAIR.nii.gz")
  nii(anat / "sub-01_ses-01_acq-3D_run-2_FLAIR.nii.gz")
  nii(root / "sub-01" / "ses-02" / "anat" / "sub-01_ses-02_FLAIR.nii.gz")
  les = np.zeros((40, 40, 40), np.uint8)
  les[10:14, 10:14, 10:14] = 1
  deriv = root / "derivatives" / "manual" / "sub-01" / "ses-01" / "anat"
  nii(deriv / "sub-01_ses-01_space-orig_label-lesion_mask.nii.gz", les)
  seg = np.zeros((40, 40, 40), np.uint8)
  seg[20:24, 20:24, 20:24] = 3   # the lesion label
  seg[0:4, 0:4, 0:4] = 1         # something else
  deriv2 = root / "derivatives" / "seg" / "sub-01" / "ses-02" / "anat"
  nii(deriv2 / "sub-01_ses-02_dseg.nii.gz", seg)
  (deriv2 / "sub-01_ses-02_dseg.tsv").write_text("index\tname\n1\tCSF\n3\tMS lesion\n")
  nii(root / "sub-02" / "anat" / "sub-02_T2w.nii.gz")
  nii(root / "sub-02" / "anat" / "sub-02_angio.nii.gz")
  (root / "dataset_description.json").write_text('{"Name": "t", "BIDSVersion": "1.8.0"}')


def save(path, data, affine=None, dtype=None):
  affine = np.eye(4) if affine is None else affine
  img = nib.Nifti1Image(np.asarray(data) if dtype is None else np.asarray(data).astype(dtype),
                        affine)
  nib.save(img, str(path))
  return str(path)


def brainlike(shape=(20, 20, 20), seed=0):
  rng = np.random.default_rng(seed)
  return (rng.random(shape) + 1).astype(np.float32)


def expect(match, fn, *args, **kwargs):
  with pytest.raises(InvalidInputError, match=match) as e:
    fn(*args, **kwargs)
  return str(e.value)


FOUR_MM = np.diag([4.0, 4.0, 4.0, 1.0])  # 20 voxels of 4 mm: an 80 mm field of view


def exam_folder(tmp_path, shape=(20, 20, 20), affines=None):
  d = tmp_path / "p1"
  d.mkdir(exist_ok=True)
  img = brainlike(shape)
  paths = {}
  for i, m in enumerate(("T1W", "FLAIR")):
    aff = (affines or {}).get(m, FOUR_MM)
    paths[m] = save(d / f"{m}.nii.gz", img * (i + 1), aff)
  return d, paths


def touch_nifti(path, shape=(10, 10, 10), mask=False):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  data = np.zeros(shape, np.uint8) if mask else np.random.default_rng(0).random(shape) + 1
  nib.save(nib.Nifti1Image(data.astype(np.uint8 if mask else np.float32), np.eye(4)), path)


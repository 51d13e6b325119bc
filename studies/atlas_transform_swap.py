"""Is it the atlas brain mask or its MNI registration that moves :fast's masks (issue 36)? Segment
raw exams with `preprocess.skull_strip=atlas` but the MNI transform a reference workdir (today's
default, ROBEX) found for each exam, read from its work/preprocessed/<exam>/to_mni.tfm: only the
brain mask (and what it changes: the Nyúl landmarks, the network's border) differs from the
reference. Compare with studies/segment_compare.py.

  python studies/atlas_transform_swap.py --reference runs/d36_default --out runs/d36_atlas_regfix
"""
from __future__ import annotations

import argparse
import glob
import os

import SimpleITK as sitk
from absl import logging

from msjax import segment
from msjax.configs import segment as segment_config
from msjax.data import cohort as cohort_lib
from msjax.preprocess import steps


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--reference", required=True)
  p.add_argument("--input", default="../shared/data/lesjak_longitudinal_raw")
  p.add_argument("--out", required=True)
  a = p.parse_args(argv)
  by_origin = {}  # the registration sees only an image: find its exam by the FLAIR's origin
  for exam in cohort_lib.load_cohort(a.input).exams:
    tfm = glob.glob(os.path.join(a.reference, "work", "preprocessed", exam.exam_id, "to_mni.tfm"))
    if not tfm:
      raise SystemExit(f"{a.reference} has no MNI transform for {exam.exam_id}")
    flair = sitk.ReadImage(exam.images["FLAIR"])
    by_origin[tuple(round(x, 2) for x in flair.GetOrigin())] = sitk.ReadTransform(tfm[0])
  steps.register_head_to_mni = lambda img: by_origin[tuple(round(x, 2) for x in img.GetOrigin())]
  cfg = segment_config.get_config()
  cfg.input, cfg.overlap = a.input, False  # in this process: the swap holds
  cfg.preprocess.skull_strip = "atlas"
  logging.set_verbosity(logging.INFO)
  segment.run(cfg, a.out)


if __name__ == "__main__":
  main()

"""Does the atlas arm match the default once its MNI registration is the default's own function
(issue 36)? Segment raw exams with `preprocess.skull_strip=atlas`, its head-to-MNI transform then
refined by `steps.register_to_mni` (the brain-to-MNI registration today's default runs on the
ROBEX-stripped T1) on the T1 stripped by the atlas mask; the atlas mask is then taken again
through the refined transform. Compare with studies/segment_compare.py.

  python studies/atlas_refined_registration.py --out runs/d36_atlas_refine
"""
from __future__ import annotations

import argparse

import SimpleITK as sitk
from absl import logging

from msjax import segment
from msjax.configs import segment as segment_config
from msjax.preprocess import steps


def refined_registration(head_registration):
  def register(head_t1):
    to_mni = head_registration(head_t1)
    brain = steps.atlas_brain_mask(head_t1, to_mni)
    logging.info("refining the MNI registration on the atlas-stripped brain")
    return steps.register_to_mni(sitk.Mask(head_t1, brain))
  return register


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--input", default="../shared/data/lesjak_longitudinal_raw")
  p.add_argument("--out", required=True)
  a = p.parse_args(argv)
  steps.register_head_to_mni = refined_registration(steps.register_head_to_mni)
  cfg = segment_config.get_config()
  cfg.input, cfg.overlap = a.input, False
  cfg.preprocess.skull_strip = "atlas"
  logging.set_verbosity(logging.INFO)
  segment.run(cfg, a.out)


if __name__ == "__main__":
  main()

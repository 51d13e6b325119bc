"""How far segment's masks move when nothing changes but where the sliding windows fall (issue
36): the exams of a segment workdir, from the preprocessed exams it made, segmented again by the
same model and options with the window grid moved `--offset` voxels along every axis. Its Dice
against the workdir's own masks is the floor under any "Dice against today's default": a change
of setting that scores there has changed no more than moving the windows does.

  python studies/window_jitter.py --reference runs/d36_default --offset 8 --out runs/d36_jitter8
  python studies/segment_compare.py --reference default=runs/d36_default \\
      --run windows+8=runs/d36_jitter8 ...

Writes a workdir that segment_compare reads: segment_summary.json and the masks.
"""
from __future__ import annotations

import argparse
import functools
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import results  # noqa: E402

from msjax import segment  # noqa: E402
from msjax.configs import segment as segment_config  # noqa: E402
from msjax.data import cohort as cohort_lib  # noqa: E402
from msjax.data import patches as patch_lib  # noqa: E402
from msjax.infer import predict, sliding_window  # noqa: E402


def moved_corners(shape, patch: int, overlap: float, brain=None, *, offset: int, tiling):
  """`tiling` (sliding_window_corners) with every corner moved `offset` voxels along each axis,
  kept inside the volume; windows that touch no brain left out as there."""
  corners = np.unique(np.clip(tiling(shape, patch, overlap) + offset, 0,
                              np.asarray(shape) - patch), axis=0).astype(np.int32)
  if brain is not None:
    corners = corners[patch_lib.box_fractions(brain, patch)[tuple(corners.T)] > 0]
  return corners


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  p.add_argument("--reference", required=True, help="a segment workdir of raw exams")
  p.add_argument("--input", default="../shared/data/lesjak_longitudinal_raw",
                 help="the exams it segmented")
  p.add_argument("--offset", type=int, default=8, help="voxels the window grid moves")
  p.add_argument("--flips", default="all", choices=["all", "spread", "none"])
  p.add_argument("--model", default="")
  p.add_argument("--out", required=True)
  a = p.parse_args(argv)
  cfg = segment_config.get_config()
  cfg.input, cfg.model, cfg.overlap = a.input, a.model, False
  cfg.predict.mirror = a.flips != "none"
  cfg.predict.flips = "spread" if a.flips == "spread" else "all"
  bundle = segment.load_bundle(a.model)
  options = segment.inference_options(cfg, bundle)
  prepare = segment.preprocessor(cfg, bundle, a.reference)  # reuses its preprocessed exams
  predictor = predict.Predictor(bundle["path"])
  sliding_window.sliding_window_corners = functools.partial(
      moved_corners, offset=a.offset, tiling=sliding_window.sliding_window_corners)
  rows = []
  for exam in cohort_lib.load_cohort(a.input).exams:
    ready = prepare(segment.known_sequences(exam, bundle))
    t = time.time()
    seg = predict.segment_exam(predictor, ready, options)
    predict_s = round(time.time() - t, 1)
    row = predict.export_exam(seg, ready, a.out)
    rows.append({"exam_id": exam.exam_id, "status": "segmented", "lesions": row["lesions"],
                 "volume_ml": row["volume_ml"], "predict_s": predict_s,
                 "files": {"mask": os.path.relpath(row["mask"], a.out)}})
    print(f"{exam.exam_id}: {row['lesions']} lesions, {row['volume_ml']:.2f} mL "
          f"({predict_s} s)", flush=True)
  results.write(os.path.join(a.out, "segment_summary.json"),
                json.dumps({"offset": a.offset, "flips": a.flips, "exams": rows}, indent=1))


if __name__ == "__main__":
  main()

"""Lesion change between two visits of each patient (msjax/longitudinal/mode.py):
`--config.input=<folder of patients with study1_*/study2_* or ses-* visits, or a BIDS dataset
with two sessions per subject>`, or `--config.baseline=DIR --config.followup=DIR` for one patient;
both visits are also segmented with `--config.model=<finetune workdir or shipped name>` (default:
the shipped model, when msjax ships one) as `segment` does
(raw exams preprocessed with the bundle's settings; `--config.preprocessed=True` for exams on the
model grid). Outputs: a BIDS-derivatives dataset in the workdir."""
import dataclasses

from ml_collections import config_dict

from msjax import config_base
from msjax.report import report_config
from msjax.longitudinal import change


def get_config(variant: str = ""):
  v = config_base.variants(variant, "smoke", "fast")
  c = config_dict.ConfigDict()
  c.mode = "longitudinal"
  c.seed = 0
  c.input = ""
  c.baseline = ""
  c.followup = ""
  c.sessions = ""           # "<baseline>,<follow-up>" session labels, for patients with more visits
  c.model = ""              # finetune workdir or shipped name; '' = the default shipped model,
                            # else (none shipped) change detection without per-visit segmentation
  c.preprocessed = False    # exams already on the model grid (with a model): no preprocessing
  # as segment: the 8 grid phases, each in one flip, dealt out over the ensemble's members
  c.predict = config_base.predict(mirror=True, flips="dealt", phases=8)
  c.predict.threshold = config_dict.placeholder(float)  # None: the bundle's threshold
  c.predict.min_lesion_peak = config_dict.placeholder(float)  # None: the bundle's
  c.preprocess = config_base.preprocess()
  c.change = config_dict.ConfigDict()
  c.change.n4 = True
  c.change.use_t2 = True    # T2 as a second opinion where both visits have one
  c.change.brain = "otsu"   # otsu | robex (msjax/longitudinal/align.py)
  c.change.rule = config_dict.ConfigDict(dataclasses.asdict(change.Rule()))  # change.py's rule
  c.overlay_slices = 4
  c.overwrite = False       # redo every patient; by default a re-run keeps the patients already
                            # made with these settings (mode.py: settings)
  c.report = report_config()  # each visit's page (as segment writes it), with a model
  config_base.allow_any_geometry(c)
  if "fast" in v:
    config_base.fast_raw_path(c)
  if "smoke" in v:
    c.predict.batch_size = 8
    c.predict.mirror = False
    c.predict.phases = 1  # the phased path: tests/infer/test_predict.py
    c.predict.phase_windows = "all"
    c.preprocess.n4_iterations = (5, 5)
    c.report.page_pdf = False
  return config_base.finish(c, v)

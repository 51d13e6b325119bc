"""Segment your exams: a lesion mask, table and report page each, by the shipped model or yours.

  --config.input=<exam folder, folder of exams, BIDS dataset or DICOM folder>
  [--config.model=<shipped name or finetune workdir>] --workdir OUT

Raw exams are preprocessed as the model's training exams were (needs the [preprocess] extra);
`--config.preprocessed=True` feeds exams already on the model grid (like ../shared/data/lesjak_mni)
straight to the network. Outputs: a BIDS-derivatives dataset in OUT.
`configs/segment.py:fast`: for throughput and triage (config_base.fast_raw_path: the
atlas-bounded brain mask instead of ROBEX, each grid phase only its share of the windows; its
measured time and how its masks compare: docs/results/fast_offset.md)."""
from ml_collections import config_dict

from msjax import config_base
from msjax.report import report_config


def get_config(variant: str = ""):
  v = config_base.variants(variant, "smoke", "fast")
  c = config_dict.ConfigDict()
  c.mode = "segment"
  c.seed = 0
  c.model = ""
  c.input = ""
  c.preprocessed = False    # exams already on the model grid: no preprocessing
  c.overwrite = False       # redo every exam; by default a re-run keeps the exams already made
                            # with the same model, threshold and options and redoes the others
  c.resume = True           # kept for older scripts: the default now (False = overwrite)
  c.shard = ""              # "K/N": this machine's share of the exams (0 <= K < N), e.g. a SLURM
                            # array task; then --config.merge=True builds the cohort table
  c.overlap = True          # raw exams: preprocess the next exam while the network runs
  c.merge = False           # only merge the complete exams in the workdir into segmentations.csv
  # test-time mirroring on, as nnU-Net does: on Lesjak patient26 it turned 19 lesions + 18 specks
  # of <= 3 mm³ into 15 + 2 at the same volume. The 8 flips of each patch are dealt out over the
  # shipped ensemble's members (8 passes in all, not 8 per member; one network: every flip): on
  # the leave-one-out 57.0 / 53.7 / 53.9 / 53.3 / 44.5 mean Dice against 56.6 / 53.2 / 53.9 / 52.8
  # / 44.8 with every member in every flip, the same share of patient26's lesions found on every
  # input (one more on thick slices), one more false lesion on four; 102 s an exam, not 147
  # (docs/results/seed_ensemble.md, dealt_flips.md). --config.predict.flips=all for 8 each.
  # Grid phases (predict.phases=8, the raw exam written on the 1 mm MNI grid): the exam sampled
  # onto the model grid at its 8 half-voxel phases, phase k in flip k by member k mod 3, at the
  # same 8 passes: on the leave-one-out mean Dice 60.3 / 58.6 / 57.9 / 57.7 / 49.1 against 59.1 /
  # 56.9 / 56.5 / 55.4 / 47.7, and the mask against itself with the grid moved 0.87 mm 0.904 /
  # 0.970 against 0.713 / 0.921 (patient07 / 26, docs/results/grid_phases.md); on the raw exams
  # the atlas-mask path agrees with it at 0.85-0.94 (docs/results/raw_phases.md)
  c.predict = config_base.predict(mirror=True, flips="dealt", phases=8)
  c.predict.threshold = config_dict.placeholder(float)  # None: the bundle's threshold
  c.predict.min_lesion_peak = config_dict.placeholder(float)  # None: the bundle's
  c.preprocess = config_base.preprocess()
  c.report = report_config()  # location classes, QC verdict, one page per exam (msjax/report)
  config_base.allow_any_geometry(c)
  if "fast" in v:
    config_base.fast_raw_path(c)
  if "smoke" in v:
    c.predict.batch_size = 8
    c.predict.mirror = False
    c.predict.phases = 1  # the phased path: tests/infer/test_predict.py
    c.predict.phase_windows = "all"
    c.report.page_pdf = False
    c.preprocess.n4_iterations = (5, 5)
  return config_base.finish(c, v)

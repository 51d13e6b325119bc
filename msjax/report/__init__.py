"""A report a neurologist can read (issue 23): where each lesion is (McDonald 2017 / MAGNIMS 2016
location classes, `locations`), how sure the model is of it (`table.confidence`), whether the
scan was fit to segment (`qc`: ok / check / fail with reasons), one page per exam (`page`) and
one cohort-table row per exam (`table.cohort_row`).

Layering: below msjax.infer (which calls it); imports msjax.errors/files/figures, msjax.data and
msjax.preprocess (nyul: numpy only; native: SimpleITK, lazily), and nilearn's MNI152 templates
from the `preprocess` extra (read from its package folder, no download).

  from msjax.report import locations, page, qc, table
  labels = table.lesion_labels(mask, affine)              # numbered as the lesion table is
  extra, loc = table.lesion_rows(labels, affine, probability=p, spread=s, to_mni=to_mni,
                                 flair=flair)              # lesion_id -> extra columns
  summary = table.class_summary(labels, affine, loc)      # counts and mL per class
  verdict = qc.exam_qc(images, brain, model_affine, native_spacing=..., landmarks=...)
  page.draw_page(png, flair, labels, loc, summary, title=..., qc=verdict, model=..., version=...)
  row = table.cohort_row(exam_id, summary, verdict)       # one row of the cohort CSV
"""
from ml_collections import config_dict


def report_config() -> config_dict.ConfigDict:
  """The report's config block: location rule settings (`locations`), QC thresholds (`qc`,
  measured on the real Lesjak exams and damaged copies: msjax/report/qc.py), and the page."""
  from msjax.report import locations, qc
  c = config_dict.ConfigDict()
  c.enabled = True
  c.locations = locations.config()
  c.qc = qc.config()
  c.page_slices = 6      # axial slices on the page
  c.page_pdf = True      # a PDF beside the PNG
  return c

"""Data: NIfTI I/O, cohorts (manifests, folders, BIDS), exams as model input, patch pipelines."""

"""Evaluation: the MSSEG-2016 metrics, the evaluate mode, the FLAIR-threshold baseline, figures."""

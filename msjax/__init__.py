"""msjax: MS lesion segmentation in 3D MRI with self-supervised position pretraining, in JAX/Flax.

Layers, lowest first: a module imports only from its own layer or those before it (checked by
tests/test_layers.py, which reads every import, those inside functions too). A layer is the
first name under msjax/ (a subpackage or a top-level module); the composite modes and the entry
point, unnamed here, come last.
"""
__version__ = "0.1.0"

LAYERS = ("errors", "console", "files", "rules", "figures", "config_base", "parallel", "profiler",
          "data", "preprocess", "report", "ops", "models", "shipped", "checkpoint", "infer", "evaluate",
          "train", "stages", "segment", "longitudinal", "cli")

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


def code_version() -> str:
  """The version with a digest of the package's own source (every .py and .cc under msjax/):
  what outputs and preprocessed exams kept for re-runs are made by. The version alone names a
  release; between releases (a checkout, an editable install) the code moves under one version,
  and a re-run must not keep what older code made."""
  if not _CODE_VERSION:
    import hashlib
    import os
    root = os.path.dirname(os.path.abspath(__file__))
    sources = []
    for folder, dirs, names in os.walk(root):
      dirs[:] = [d for d in dirs if not d.startswith((".", "__pycache__"))]  # not walked
      sources += [os.path.join(folder, n) for n in names if n.endswith((".py", ".cc"))]
    h = hashlib.sha256()
    for path in sorted(sources):
      h.update(os.path.relpath(path, root).encode() + b"\0")
      with open(path, "rb") as f:
        h.update(f.read())
    _CODE_VERSION.append(f"{__version__}+{h.hexdigest()[:12]}")
  return _CODE_VERSION[0]


_CODE_VERSION: list = []

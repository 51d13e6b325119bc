"""The package's layers (msjax.LAYERS) hold: no module imports from a later layer, directly or
from inside a function, and no two layers import each other; and no module imports the lab's
studies (studies/, not installed)."""
import ast
import os

import msjax

PACKAGE = os.path.dirname(os.path.abspath(msjax.__file__))


def _modules():
  for dirpath, _, names in os.walk(PACKAGE):
    for n in sorted(names):
      if n.endswith(".py"):
        path = os.path.join(dirpath, n)
        rel = os.path.relpath(path, os.path.dirname(PACKAGE))[:-3].replace(os.sep, ".")
        yield rel.removesuffix(".__init__"), path


def _imports(module: str, path: str, source: str | None = None):
  tree = ast.parse(source if source is not None else open(path, encoding="utf-8").read(), path)
  base = module if path.endswith("__init__.py") else module.rpartition(".")[0]
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      yield from (a.name for a in node.names)
    elif isinstance(node, ast.ImportFrom):
      src = node.module or ""
      if node.level:
        parts = base.split(".")
        src = ".".join(parts[: len(parts) - node.level + 1] + ([src] if src else []))
      yield src
      yield from (f"{src}.{a.name}" for a in node.names)


def _layer(module: str) -> int:
  """Index of a msjax module's layer; the unnamed ones (composite modes, main) come last."""
  parts = module.split(".")
  name = parts[1] if len(parts) > 1 else ""
  return msjax.LAYERS.index(name) if name in msjax.LAYERS else len(msjax.LAYERS)


def upward_imports(extra: dict | None = None):
  """Every import from a later layer; `extra`: {module name: source} checked as if it were in
  the package."""
  found = set()
  sources = [(m, p, None) for m, p in _modules()]
  sources += [(m, m.replace(".", os.sep) + ".py", src) for m, src in (extra or {}).items()]
  for module, path, source in sources:
    for target in _imports(module, path, source):
      if not target.startswith("msjax.") or target == "msjax":
        continue
      if _layer(target) > _layer(module):
        found.add(f"{module} -> {target}")
  return sorted(found)


def test_layers_no_upward_import():
  assert upward_imports() == []


def test_layers_the_check_sees_an_upward_import():
  """The check itself: a data-layer module importing the segment mode (inside a function) is
  found."""
  probe = "def f():\n  from msjax import segment\n  return segment\n"
  assert upward_imports({"msjax.data.probe": probe}) == [
      "msjax.data.probe -> msjax.segment"]


def test_the_package_imports_no_study():
  """studies/ is not in the wheel: an installed msjax that imported it would fail."""
  found = sorted(f"{module} -> {target}" for module, path in _modules()
                 for target in _imports(module, path)
                 if target == "studies" or target.startswith("studies."))
  assert found == []

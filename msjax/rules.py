"""Parameter-path rules: ordered (regex, value) pairs, first match wins. The one language for
initialisation, freezing and transfer. Paths look like `encoder/conv3/kernel`; those rule lists
name the parameter families of msjax/models/paths.py and end in no catch-all, so a new parameter
that no family covers fails loudly in `match`."""
from __future__ import annotations

import re
from typing import Any, Sequence

import jax


def path_str(path) -> str:
  return "/".join(str(getattr(k, "key", getattr(k, "name", getattr(k, "idx", k)))) for k in path)


def flat_paths(tree) -> dict[str, Any]:
  return {path_str(p): leaf for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def match(tree, rules: Sequence[tuple[str, Any]], *, what: str = "rules"):
  """Labels every leaf with the value of the first rule whose regex fully matches its path.

  Returns (label tree with the structure of `tree`, {rule regex: [matched paths]}). Raises if any
  leaf matches no rule: with rule lists that name what they cover (no `.*`), a new parameter
  never silently escapes a policy.
  """
  compiled = [(re.compile(rx), rx, value) for rx, value in rules]
  log: dict[str, list[str]] = {rx: [] for _, rx, _ in compiled}
  unmatched = []

  def label(path, _):
    p = path_str(path)
    for regex, rx, value in compiled:
      if regex.fullmatch(p):
        log[rx].append(p)
        return value
    unmatched.append(p)
    return None

  labels = jax.tree_util.tree_map_with_path(label, tree)
  if unmatched:
    raise ValueError(f"{what}: {len(unmatched)} parameter(s) match no rule, e.g. {unmatched[:5]}")
  return labels, log

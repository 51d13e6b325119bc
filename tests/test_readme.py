"""The README is a front page, not a lab notebook: short, the way to segment one's own scan at the
top, every measured figure copied from a generated file in docs/results/, links that resolve, and
the test command CI runs.

Measured figures live in markdown tables only, each table's rows copied word for word from the
docs/results/*.md file linked on the line just before it. A table without such a link (the
stages table) may not hold a row that looks measured: a decimal number, a number with a unit of
time, volume, size or percent, or a count out of a total (`4/14`).
"""
import os
import re

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
RESULTS = os.path.join(ROOT, "docs", "results")

MEASURED = re.compile(r"\b\d+\.\d+\b"                                          # 0.61, 53.5
                      r"|\b\d+\s*(?:s|ms|min|h|mL|L|MB|GB|%)(?![A-Za-z0-9])"  # 65 s, 4 mL, 46 %
                      r"|\b\d+\s*/\s*\d+\b")                                   # 4/14
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
RESULTS_LINK = re.compile(r"\]\((docs/results/[^)\s]+\.md)\)")
# a command that runs pytest (not a line that only mentions it)
RUNS_PYTEST = re.compile(r"(?:^|&&|;|\|\|)\s*(?:python3? -m )?pytest\b")


def _lines(path=README):
  with open(path, encoding="utf-8") as f:
    return f.read().splitlines()


def _tables(lines):
  """Markdown tables outside code fences: (rows, the nearest non-empty line before the table)."""
  tables, rows, before, fenced = [], [], "", False
  for line in lines + [""]:
    s = line.strip()
    if s.startswith("```"):
      fenced = not fenced
    if not fenced and s.startswith("|"):
      rows.append(s)
      continue
    if rows:
      tables.append((rows, before))
      rows = []
    if s:
      before = s
  return tables


def _fenced(lines):
  out, fenced = [], False
  for line in lines:
    if line.strip().startswith("```"):
      fenced = not fenced
    elif fenced:
      out.append(line.strip())
  return out


def test_readme_is_short():
  assert len(_lines()) < 300


def test_first_lines_segment_own_scan():
  head = "\n".join(_lines()[:40])
  assert "--config=segment" in head and "--config.input" in head


def test_measured_figures_are_copied_from_generated_results():
  problems = []
  for rows, before in _tables(_lines()):
    sources = RESULTS_LINK.findall(before)
    if not sources:
      measured = [r for r in rows if MEASURED.search(r)]
      if measured:
        problems.append(f"table after {before!r} has measured rows without a docs/results link "
                        f"on the line before it: {measured[0]!r}")
      continue
    texts = []
    for source in sources:
      path = os.path.join(ROOT, source)
      assert os.path.isfile(path), f"{source} (linked before a README table) does not exist"
      texts.append({line.strip() for line in _lines(path)})
    for row in rows:
      if re.search(r"\d", row) and not any(row in t for t in texts):
        problems.append(f"row not found verbatim in {', '.join(sources)}: {row!r}")
  assert not problems, "\n".join(problems)


def test_every_generated_result_is_linked():
  linked = set(RESULTS_LINK.findall("\n".join(_lines())))
  generated = {f"docs/results/{n}" for n in os.listdir(RESULTS) if n.endswith(".md")}
  assert generated <= linked, f"not linked from README.md: {sorted(generated - linked)}"


def test_relative_links_resolve():
  docs = os.path.join(ROOT, "docs")
  for path in [README] + [os.path.join(docs, n) for n in os.listdir(docs) if n.endswith(".md")]:
    base = os.path.dirname(path)
    for target in LINK.findall("\n".join(_lines(path))):
      if re.match(r"[a-z]+:", target) or target.startswith("#"):
        continue
      target = target.split("#")[0]
      assert os.path.exists(os.path.join(base, target)), f"{os.path.relpath(path, ROOT)}: {target}"


def test_stages_table_lists_every_config():
  names = sorted(n for n in os.listdir(os.path.join(ROOT, "configs"))
                 if n.endswith(".py") and n != "__init__.py")
  rows = [r for rows, _ in _tables(_lines()) for r in rows]
  missing = [n for n in names if not any(r.startswith(f"| `{n}`") for r in rows)]
  assert not missing, f"configs without a row in the README's stages table: {missing}"


def test_test_command_is_what_ci_runs():
  with open(os.path.join(ROOT, ".ci", "run"), encoding="utf-8") as f:
    ci = [line.strip() for line in f if RUNS_PYTEST.search(line.strip())]
  assert len(ci) == 1, f".ci/run should run one pytest command, found {ci}"
  readme = [line for line in _fenced(_lines()) if RUNS_PYTEST.search(line)]
  assert readme == ci, f"README's fenced test command {readme} != .ci/run's {ci}"

"""studies/lesion_transplant.py: an arm of an earlier results file reads back by its name; each
arm's wall time comes from its own runs."""
import json

import pytest

from studies import lesion_transplant


def test_an_arm_of_a_written_table_reads_back_by_name_even_with_a_comma(tmp_path):
  arms = {"with transplant": {("patient07", "0CF"): {"dice": 0.382},
                              ("patient26", "0CF"): {"dice": 0.687, "lesion_f1": 0.492}},
          "transplant, seed 1": {("patient07", "0CF"): {"dice": 0.302},
                                 ("patient26", "0CF"): {"dice": 0.714, "lesion_f1": 0.65},
                                 ("patient07", "0CF [FLAIR]"): {"dice": 0.275},
                                 ("patient26", "0CF [FLAIR]"): {"dice": 0.68, "lesion_f1": 0.532}}}
  path = tmp_path / "earlier.md"
  path.write_text("# earlier\n\n" + lesion_transplant.table(arms))
  got = lesion_transplant.rows_of(f"{path}#transplant, seed 1")
  assert got[("patient26", "0CF")] == {"dice": pytest.approx(0.714), "lesion_f1": 0.65}
  assert got[("patient07", "0CF [FLAIR]")] == {"dice": pytest.approx(0.275)}
  first = lesion_transplant.rows_of(f"{path}#with transplant")
  assert first[("patient07", "0CF")]["dice"] == pytest.approx(0.382)


def test_each_arm_gets_its_runs_wall_times_and_a_results_file_none(tmp_path):
  rows = [{"fold": "patient07", "method": "0CF", "dice": 0.3},
          {"fold": "patient26", "method": "0CF", "dice": 0.7, "lesion_f1": 0.6}]
  for name, minutes in (("a.json", 10.0), ("b.json", 12.0)):
    (tmp_path / name).write_text(json.dumps({"rows": rows, "times_s": {
        "finetune patient07 0CF": minutes * 60, "total": 1e6}}))
  earlier = tmp_path / "earlier.md"
  earlier.write_text("# earlier\n\n" + lesion_transplant.table(
      {"x, y": {(r["fold"], r["method"]): r for r in rows}}))
  out = tmp_path / "out.md"
  lesion_transplant.main(["--with", f"{tmp_path / 'a.json'},{tmp_path / 'b.json'}",
                          "--without", f"{earlier}#x, y", "--also", f"c={tmp_path / 'a.json'}",
                          "--names", "ab,old", "--out", str(out)])
  text = out.read_text()
  assert "Wall time on 2 cores (ab): finetune patient07 0CF 12.0 min\n" in text  # the longest
  assert "Wall time on 2 cores (c): finetune patient07 0CF 10.0 min\n" in text
  assert "(old)" not in text and "total" not in text

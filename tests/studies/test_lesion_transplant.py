"""studies/lesion_transplant.py: an arm of an earlier results file reads back by its name."""
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

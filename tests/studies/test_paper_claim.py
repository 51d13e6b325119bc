"""studies/paper_claim.py: runs read from workdirs or kept summaries, levers labelled apart."""
import json
import os

from studies import paper_claim


def _run(folder, dice: dict, times=None):
  os.makedirs(folder)
  rows = [{"method": m, "fold": f, "dice": d} for (m, f), d in dice.items()]
  with open(os.path.join(folder, "leave_one_out.json"), "w") as fh:
    json.dump({"rows": rows, "times_s": times or {}, "outputs": {"x": "/machine/path"}}, fh)
  return str(folder)


def test_a_lever_is_reported_beside_the_recipe_and_its_kept_summary_reads_back(tmp_path):
  van = _run(tmp_path / "van", {("VAN", "patient07"): 0.2, ("VAN", "patient26"): 0.6,
                                ("VAN [FLAIR]", "patient07"): 0.1})
  lever = _run(tmp_path / "lr", {("0CF", "patient07"): 0.3, ("0CF", "patient26"): 0.65,
                                 ("flair_threshold", "patient07"): 0.9},
               times={"finetune patient07 0CF": 600.0, "predict patient07 0CF all": 90.0})
  runs = [f"0:{van}", f"0:{lever}@lr×0.1"]
  scores = paper_claim.collect(runs)
  assert scores[("0CF lr×0.1", "all", 0, "patient07")] == 0.3
  assert not any(k[0].startswith("flair") for k in scores)  # baselines are not strategies
  gains = paper_claim.gains(scores)
  assert "| 0CF lr×0.1 | all | patient07 s0: +10.0, patient26 s0: +5.0 | **+7.5** |" in gains
  assert "| 0CF lr×0.1 | all | 0 | 30.0 | 65.0 | **47.5** (one seed) |" in paper_claim.table(scores)
  assert "| 0CF lr×0.1 | 0 |" in paper_claim.times(runs)
  kept = tmp_path / "kept"
  paper_claim.keep(runs, str(kept))
  again = paper_claim.collect([f"0:{kept}/van.json", f"0:{kept}/lr.json@lr×0.1"])
  assert again == scores
  assert "/machine/path" not in (kept / "lr.json").read_text()

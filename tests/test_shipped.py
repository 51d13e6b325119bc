"""Shipped models (msjax/shipped): the release job's export, the hash, the default model of
`segment`, the sequence sets a bundle takes, and init_from=<shipped name>."""
import dataclasses
import json
import os
import re
import shutil

import nibabel as nib
import numpy as np
import pytest

from conftest import LESJAK_MNI, ROOT, finetune_smoke, load_config, needs_lesjak
from msjax import checkpoint, errors, release, rules, segment, shipped
from msjax.infer import bundle as bundle_lib
from msjax.infer import export as export_lib
from msjax.infer import predict
from msjax.models import model as model_lib

# shipped weights are float16, 11 bits of each weight (relative error up to 2^-11): through the
# network a logit moves by ~1e-2, a probability by a quarter of that (2.8e-3 seen on one smoke
# model); weights loaded wrongly or a member missed move probabilities by 1e-2 to 1e-1
FLOAT16_ATOL = 5e-3


@pytest.fixture(scope="module")
def released(tiny_cohort, tmp_path_factory):
  """configs/release.py:smoke on the tiny cohort, float32, exported into a tmp shipped folder."""
  work = tmp_path_factory.mktemp("release")
  out = str(work / "shipped")
  config = load_config("release", "smoke", labelled=tiny_cohort.root, out=out,
                       **{"model.dtype": "float32"})
  summary = release.run(config, str(work / "run"))
  return summary


@pytest.fixture
def shipped_root(released, monkeypatch):
  monkeypatch.setenv(shipped.ENV, released["out"])
  return released["out"]


def test_release_exports_both_models_as_float16_of_the_trained_weights(released, shipped_root):
  assert shipped.names() == [shipped.DEFAULT, shipped.ENCODER]
  assert shipped.names("position") == [shipped.ENCODER]
  for name, workdir in ((shipped.DEFAULT, released["finetune"]),
                        (shipped.ENCODER, released["pretrain"])):
    folder = shipped.find(name)
    assert sorted(os.listdir(folder)) == ["bundle.json", "model_card.md", "weights.npz"]
    params, bundle = shipped.load_params(folder)
    assert bundle["weights"]["sha256"] == shipped.sha256(os.path.join(folder, "weights.npz"))
    original, _, _ = checkpoint.restore_params(workdir)
    got, want = rules.flat_paths(params), rules.flat_paths(original)
    assert sorted(got) == sorted(want)  # the same parameter tree
    for p, v in want.items():
      assert got[p].dtype == np.float32 and got[p].shape == v.shape
      np.testing.assert_array_equal(got[p], np.asarray(v).astype(np.float16).astype(np.float32))
  card = open(os.path.join(shipped.find(shipped.DEFAULT), "model_card.md")).read()
  assert "not a medical device" in card and "--config.model=msjax-lesjak" in card
  assert "## Inputs" in card and "LEAD:" in card  # the figures the lead fills in


def test_a_damaged_weights_file_is_refused_naming_it(released, tmp_path):
  folder = str(tmp_path / "m")
  shutil.copytree(os.path.join(released["out"], shipped.DEFAULT), folder)
  weights = os.path.join(folder, "weights.npz")
  data = open(weights, "rb").read()
  open(weights, "wb").write(data[: len(data) // 2])  # truncated
  for load in (shipped.load_params, bundle_lib.read, predict.Predictor):
    with pytest.raises(errors.InvalidInputError, match=f"{weights}: damaged weights file"):
      load(folder)
  os.remove(weights)
  with pytest.raises(errors.InvalidInputError, match="weights of the shipped model .* missing"):
    shipped.load_params(folder)


def test_shipped_model_predicts_as_the_workdir_within_float16(released):
  x = np.random.default_rng(0).normal(size=(3, 16, 16, 16, 5)).astype(np.float32)
  a = np.asarray(predict.Predictor(released["finetune"]).predict_batch(x))
  b = np.asarray(predict.Predictor(os.path.join(released["out"], shipped.DEFAULT))
                 .predict_batch(x))
  assert a.shape == b.shape == (3, 16, 16, 16)
  assert np.abs(a - b).max() < FLOAT16_ATOL, np.abs(a - b).max()
  assert np.abs(a - b).mean() < 5e-4, np.abs(a - b).mean()


@pytest.fixture(scope="module")
def ensemble(released, tiny_cohort, tmp_path_factory):
  """The same smoke release as `released` with a second member (seed 1): its workdir resumes the
  first member and trains only the second."""
  work = tmp_path_factory.mktemp("ensemble")
  run_dir = str(work / "run")
  shutil.copytree(os.path.dirname(released["finetune"]), run_dir)
  # as a run recorded before shipped_dtype and members left the fingerprint, and before
  # data.renormalise was added (off here): it still resumes
  record = os.path.join(run_dir, "release_run.json")
  fingerprint = json.load(open(record))
  fingerprint["config"].update(shipped_dtype="auto", members=1)
  del fingerprint["config"]["data"]["renormalise"]
  json.dump(dict(fingerprint, sha256="recorded-by-an-older-msjax"), open(record, "w"))
  config = load_config("release", "smoke", labelled=tiny_cohort.root, out=str(work / "shipped"),
                       members=2, **{"model.dtype": "float32"})
  return release.run(config, run_dir)


def test_an_ensemble_ships_every_member_and_predicts_their_mean(ensemble):
  folder = os.path.join(ensemble["out"], shipped.DEFAULT)
  assert sorted(os.listdir(folder)) == ["bundle.json", "model_card.md", "weights-1.npz",
                                        "weights.npz"]
  bundle = shipped.read_bundle(folder)
  assert bundle["format"] == 2 and bundle["training"]["member_seeds"] == [0, 1]
  assert [m["file"] for m in shipped.member_records(bundle)] == ["weights.npz", "weights-1.npz"]
  first, second = ensemble["finetune"]
  x = np.random.default_rng(0).normal(size=(2, 16, 16, 16, 5)).astype(np.float32)
  a = np.asarray(predict.Predictor(first).predict_batch(x))
  b = np.asarray(predict.Predictor(second).predict_batch(x))
  assert np.abs(a - b).max() > 1e-2  # two networks, not one twice
  got = np.asarray(predict.Predictor(folder).predict_batch(x))
  np.testing.assert_allclose(got, (a + b) / 2, atol=FLOAT16_ATOL)
  mirrored = np.asarray(predict.Predictor(folder).predict_batch(x, mirror=True))
  want = (np.asarray(predict.Predictor(first).predict_batch(x, mirror=True))
          + np.asarray(predict.Predictor(second).predict_batch(x, mirror=True))) / 2
  np.testing.assert_allclose(mirrored, want, atol=FLOAT16_ATOL)
  # flips dealt over the members: each member averages its own share of the 8 flips
  ensemble_predictor = predict.Predictor(folder)
  dealt = np.asarray(ensemble_predictor.predict_batch(x, mirror=True, dealt=True))
  shares = model_lib.dealt_flips(2)
  assert sorted(shares[0] + shares[1]) == sorted(model_lib.MIRRORS) and len(shares[0]) == 4
  want = np.mean([np.asarray(model_lib.make_predict(p.model, "segmentation", mirror=True,
                                                    flips=share)(p.params, x))
                  for p, share in zip((predict.Predictor(first), predict.Predictor(second)),
                                      shares)], axis=0)
  np.testing.assert_allclose(dealt, want, atol=FLOAT16_ATOL)
  # not the 8 flips of every member (0.07 apart on the smoke ensemble): beyond the tolerance
  assert np.abs(dealt - mirrored).max() > 2 * FLOAT16_ATOL
  # one pass by one member (a grid phase's): that member's own network
  for k, want in enumerate((a, b)):
    np.testing.assert_allclose(np.asarray(ensemble_predictor.predict_one_pass(x, member=k)),
                               want, atol=FLOAT16_ATOL)
  card = open(os.path.join(folder, "model_card.md")).read()
  assert "an ensemble of 2 networks" in card and "at seeds 0, 1" in card


def test_segment_with_the_ensemble_says_so_and_writes_its_mean(ensemble, tiny_cohort, tmp_path,
                                                                monkeypatch):
  monkeypatch.setenv(shipped.ENV, ensemble["out"])
  inp = tmp_path / "in"
  _exam(tiny_cohort, inp, "one", "FLAIR")
  config = load_config("segment", "smoke", input=str(inp), preprocessed=True,
                       **{"report.enabled": False})
  summary = segment.run(config, str(tmp_path / "out"))
  (row,) = summary["exams"]
  assert row["settings"]["model"] == shipped.DEFAULT
  import msjax  # what a re-run compares: the code that made it, not the version number alone
  assert row["settings"]["msjax"] == msjax.code_version() != msjax.__version__
  assert os.path.exists(tmp_path / "out" / row["files"]["probseg"])
  bundle = shipped.read_bundle(os.path.join(ensemble["out"], shipped.DEFAULT))
  assert "the mean of a 2-member ensemble" in segment.made_with(
      config, dict(bundle, path=""), segment.inference_options(config, bundle))
  dealt = dataclasses.replace(segment.inference_options(config, bundle), mirror=True,
                              flips="dealt")
  assert "8-flip mirroring dealt over the 2 members" in segment.made_with(
      config, dict(bundle, path=""), dealt)
  one = dict(bundle, path="", members=None)  # one network: dealt is every flip
  assert "8-flip mirroring," in segment.made_with(config, one, dealt)


def test_a_damaged_ensemble_member_is_refused_naming_it(ensemble, tmp_path):
  folder = str(tmp_path / "m")
  shutil.copytree(os.path.join(ensemble["out"], shipped.DEFAULT), folder)
  weights = os.path.join(folder, "weights-1.npz")
  data = open(weights, "rb").read()
  open(weights, "wb").write(data[: len(data) // 2])
  with pytest.raises(errors.InvalidInputError, match=f"{weights}: damaged weights file"):
    predict.Predictor(folder)
  shipped.load_params(folder)  # the first member alone is intact


def test_export_replaces_a_model_whole_or_not_at_all(released, ensemble, tmp_path):
  folder = str(tmp_path / "m")
  shutil.copytree(os.path.join(ensemble["out"], shipped.DEFAULT), folder)
  before = {n: shipped.sha256(os.path.join(folder, n)) for n in os.listdir(folder)}
  # a member of another network (the pretraining's position network) is refused by name after
  # the first network's weights (the second member's: other weights) were written: the
  # two-member model there stays as it was
  with pytest.raises(errors.InvalidInputError, match="not the same network.*cannot join"):
    export_lib.export(ensemble["finetune"][1], folder, "m", members=(released["pretrain"],))
  assert {n: shipped.sha256(os.path.join(folder, n)) for n in os.listdir(folder)} == before
  assert os.listdir(tmp_path) == ["m"]  # no temporary folder left beside it
  shipped.verify(folder, shipped.read_bundle(folder))
  # one network exported over the ensemble: no stale weights-1.npz beside its bundle
  export_lib.export(released["finetune"], folder, "m")
  assert sorted(os.listdir(folder)) == ["bundle.json", "model_card.md", "weights.npz"]
  assert os.listdir(tmp_path) == ["m"]
  shipped.verify(folder, shipped.read_bundle(folder))


def _exam(tiny_cohort, root, name, keep):
  src = os.path.dirname(tiny_cohort.exams[0].images["FLAIR"])
  dst = root / name
  dst.mkdir(parents=True)
  for f in os.listdir(src):
    if f.startswith(keep + ".") or f.startswith("brain_mask"):
      shutil.copy(os.path.join(src, f), dst / f)


def test_segment_uses_the_shipped_model_and_refuses_sequences_it_was_not_trained_for(
    released, tiny_cohort, tmp_path, monkeypatch):
  root = tmp_path / "shipped"
  shutil.copytree(released["out"], root)
  file = root / shipped.DEFAULT / "bundle.json"
  b = json.load(open(file))  # as a model trained with sequence dropout declares its inputs
  b["inputs"] = bundle_lib.input_spec([b["inputs"]["modalities"]], sequence_dropout=0.5)
  json.dump(b, open(file, "w"))
  monkeypatch.setenv(shipped.ENV, str(root))
  inp = tmp_path / "in"
  _exam(tiny_cohort, inp, "t1only", "T1W")
  _exam(tiny_cohort, inp, "flaironly", "FLAIR")
  config = load_config("segment", "smoke", input=str(inp), preprocessed=True,
                       **{"report.enabled": False})
  summary = segment.run(config, str(tmp_path / "out"))
  assert summary["model"] == shipped.DEFAULT  # by its name, not a path of this machine
  assert [r["exam_id"] for r in summary["exams"]] == ["flaironly"]
  (failed,) = summary["failed"]
  assert failed["exam_id"] == "t1only" and "\n" not in failed["error"]
  assert "exam t1only has T1W; the model takes " in failed["error"]
  assert "FLAIR with any of the other trained sequences" in failed["error"]


def test_segment_without_a_shipped_model_says_so(tmp_path, monkeypatch):
  monkeypatch.setenv(shipped.ENV, str(tmp_path))
  config = load_config("segment", "smoke", input=str(tmp_path), preprocessed=True)
  with pytest.raises(errors.InvalidInputError, match="no shipped model 'msjax-lesjak' .*none yet"):
    segment.run(config, str(tmp_path / "out"))


def test_sequence_sets_a_bundle_takes():
  spec = bundle_lib.input_spec([{"T1W", "T2W", "FLAIR"}] * 2, sequence_dropout=0.3)
  assert spec["subsets"] == [["T1W", "T2W", "FLAIR"], ["T1W", "FLAIR"], ["T2W", "FLAIR"],
                             ["FLAIR"]]
  b = {"inputs": spec}
  assert bundle_lib.sequences_for(b, "e", {"FLAIR": 1, "PDW": 1}) == ["FLAIR"]
  with pytest.raises(errors.InvalidInputError, match="exam e has T1W\\+T2W; the model takes"):
    bundle_lib.sequences_for(b, "e", {"T1W": 1, "T2W": 1})
  # no dropout: only what the training exams had, all trained sequences here
  b = {"inputs": bundle_lib.input_spec([{"T1W", "T2W", "FLAIR"}], 0.0)}
  assert b["inputs"]["subsets"] == [["T1W", "T2W", "FLAIR"]]
  with pytest.raises(errors.InvalidInputError, match="all trained sequences"):
    bundle_lib.sequences_for(b, "e", {"FLAIR": 1, "T1W": 1})
  # an older bundle without `inputs`: every sequence it has landmarks for, together
  old = {"preprocessing": {"nyul_landmarks": {"FLAIR": {}, "T2W": {}}}}
  assert bundle_lib.inputs_of(old)[1] is False
  assert bundle_lib.sequences_for(old, "e", {"FLAIR": 1, "T2W": 1, "T1W": 1}) == ["T2W", "FLAIR"]
  with pytest.raises(errors.InvalidInputError, match="does not declare"):
    bundle_lib.sequences_for(old, "e", {"FLAIR": 1})


def test_init_from_a_shipped_name(released, shipped_root, tiny_cohort, tmp_path):
  from msjax.train import transfer
  enc, _ = shipped.load_params(shipped.find(shipped.ENCODER))
  seg, _ = shipped.load_params(shipped.find(shipped.DEFAULT))
  enc, seg = rules.flat_paths(enc), rules.flat_paths(seg)
  # 3CF from the shipped encoder: the three frozen convolutions are the shipped ones after training
  w = str(tmp_path / "ft")
  finetune_smoke(tiny_cohort, w, **{"train.freeze": "3", "train.init_from": shipped.ENCODER})
  tuned = rules.flat_paths(checkpoint.restore_params(w)[0])
  for p in ("encoder/conv1/kernel", "encoder/conv2/bias", "encoder/conv3/kernel",
            "encoder/norm3/scale"):
    np.testing.assert_array_equal(np.asarray(tuned[p]), enc[p])
  assert json.load(open(os.path.join(w, "bundle.json")))["training"]["init_from"] == shipped.ENCODER
  # the shipped segmentation model: the whole network, decoder too
  fresh = checkpoint.restore_params(w)[0]
  params, report = transfer.transfer_from_checkpoint(fresh, shipped.DEFAULT)
  got = rules.flat_paths(params)
  assert not report["kept"] and sorted(report["loaded"]) == sorted(seg)
  for p, v in seg.items():
    np.testing.assert_array_equal(np.asarray(got[p]), v)


# ---- the models this package ships (msjax/shipped/, trained by configs/release.py) -------------

def _package_models(monkeypatch):
  monkeypatch.delenv(shipped.ENV, raising=False)
  if shipped.DEFAULT not in shipped.names():
    pytest.fail(f"the package ships no {shipped.DEFAULT} in {shipped.PACKAGE_DIR}")


def _strings(value, out: list) -> None:
  if isinstance(value, dict):
    for v in value.values():
      _strings(v, out)
  elif isinstance(value, (list, tuple)):
    for v in value:
      _strings(v, out)
  elif isinstance(value, str):
    out.append(value)


def test_the_package_ships_its_models_intact(monkeypatch):
  """Both shipped models load, their hashes match, they are compact, the segmentation model
  declares every sequence set with FLAIR, and a tiny prediction runs."""
  _package_models(monkeypatch)
  assert shipped.ENCODER in shipped.names("position")
  for name in (shipped.DEFAULT, shipped.ENCODER):
    folder = shipped.find(name)
    params, bundle = shipped.load_params(folder)  # checks the sha256
    assert bundle["weights"]["sha256"] == shipped.sha256(os.path.join(folder, "weights.npz"))
    for k, member in enumerate(shipped.member_records(bundle)):  # an ensemble's every network
      shipped.load_params(folder, k)
      assert os.path.getsize(os.path.join(folder, member["file"])) < 10e6
    assert "LEAD:" not in open(os.path.join(folder, "model_card.md")).read()
    # no path of the machine that trained it, in the card or anywhere in the bundle
    card = open(os.path.join(folder, "model_card.md")).read()
    assert not re.search(r"`/|\(/|\s/(?:work|tmp|home|root|Users)/", card), name
    strings = []
    _strings(json.load(open(os.path.join(folder, "bundle.json"))), strings)
    assert not [t for t in strings if os.path.isabs(t)], name
  spec, declared = bundle_lib.inputs_of(bundle_lib.read(shipped.find(shipped.DEFAULT)))
  assert declared and ["FLAIR"] in spec["subsets"] and all("FLAIR" in s for s in spec["subsets"])



@needs_lesjak()
def test_the_shipped_model_finds_a_real_lesion_and_leaves_clean_tissue(monkeypatch):
  """Behaviour, not shape: on patient26 as the model sees it (the 128³ grid, z-scored), the
  32³ patch around its largest lesion is segmented like the raters' consensus (Dice >= 0.5) and
  a patch of its white matter away from every lesion gets (almost) nothing; weights that are
  wrong, untrained or read in the wrong order fail both."""
  from scipy import ndimage

  from msjax.data import cohort as cohort_lib
  from msjax.data import exams as exams_lib
  _package_models(monkeypatch)
  exam = next(e for e in cohort_lib.load_cohort(LESJAK_MNI).exams if e.patient_id == "patient26")
  bundle = bundle_lib.read(shipped.find(shipped.DEFAULT))
  a = exams_lib.load_exam(exam, model_shape=tuple(bundle["model_grid"]))
  predictor = predict.Predictor(shipped.find(shipped.DEFAULT))
  p = predictor.patch
  labels, n = ndimage.label(a.reference > 0)
  biggest = 1 + int(np.argmax(np.bincount(labels.ravel())[1:]))
  centre = np.round(ndimage.center_of_mass(labels == biggest)).astype(int)
  corners = [np.clip(centre - p // 2, 0, np.array(a.shape) - p)]
  for c in np.ndindex(*(np.array(a.shape) // (p // 4) - 3)):  # a patch of brain, no lesion
    k = np.array(c) * (p // 4)
    box = tuple(slice(i, i + p) for i in k)
    if a.brain[box].mean() > 0.9 and not a.reference[box].any():
      corners.append(k)
      break
  x = np.stack([a.images[tuple(slice(c, c + p) for c in k)] for k in corners])
  out = np.asarray(predictor.predict_batch(x))
  assert out.shape == (2, p, p, p) and np.all((out >= 0) & (out <= 1))
  ref = a.reference[tuple(slice(c, c + p) for c in corners[0])] > 0
  hit = out[0] >= bundle["threshold"]
  dice = 2 * (hit & ref).sum() / (hit.sum() + ref.sum())
  assert dice >= 0.5, dice
  assert (out[1] >= bundle["threshold"]).mean() < 0.01


@pytest.mark.slow  # one raw exam preprocessed for real (segment:fast: atlas mask, registrations)
def test_segment_a_real_raw_exam_with_the_shipped_model(tmp_path, monkeypatch):
  """segment:fast (the atlas brain mask and offset windows, ~35 s an exam; the default's ROBEX is
  tested on real exams by tests/preprocess, its grid phases by tests/infer/test_predict.py): the
  shipped model found without --config.model, the atlas brain mask through the 2 mm head
  registration sane on a real exam, its 8 grid phases predicted in shares of the windows."""
  from conftest import REAL_DATA
  pytest.importorskip("SimpleITK", reason="preprocessing extra not installed")
  raw = os.path.join(REAL_DATA, "lesjak_longitudinal_raw", "patient01")
  if not os.path.isdir(raw):
    pytest.skip(f"real data not found at {raw}")
  _package_models(monkeypatch)
  exam = tmp_path / "in" / "patient01"
  exam.mkdir(parents=True)
  for name in os.listdir(raw):  # study 2 only: FLAIR, T1W, T2W and their transforms
    if name.startswith("study2_"):
      shutil.copy(os.path.join(raw, name), exam / name.replace("study2_", ""))
  t1_only = tmp_path / "in" / "t1only"
  t1_only.mkdir()
  shutil.copy(os.path.join(raw, "study2_T1W.nii.gz"), t1_only / "T1W.nii.gz")
  config = load_config("segment", "fast", input=str(tmp_path / "in"), overlap=False)
  summary = segment.run(config, str(tmp_path / "out"))
  prep = tmp_path / "out" / "work" / "preprocessed" / "patient01"
  assert "atlas_mask" in json.loads((prep / "preprocess.json").read_text())["times_s"]
  brain = nib.load(prep / "patient01_brain_mask.nii.gz")
  litres = (np.asarray(brain.dataobj) > 0).sum() * abs(np.linalg.det(brain.affine[:3, :3])) / 1e6
  assert 1.5 < litres < 2.3, litres  # MNI grid: ROBEX's are 1.9-2.0 L here
  assert [r["exam_id"] for r in summary["exams"]] == ["patient01"]
  assert summary["model"] == shipped.DEFAULT  # named, not a path of this machine
  assert [f["exam_id"] for f in summary["failed"]] == ["t1only"]
  assert "FLAIR" in summary["failed"][0]["error"]
  row = summary["exams"][0]
  assert 0.5 < row["volume_ml"] < 60 and row["lesions"] >= 3  # patient01 carries many lesions
  assert (row["phases"], row["phase_windows"]) == (8, "offset")


def test_the_card_and_bundle_name_no_path_of_the_training_machine(released, tiny_cohort):
  """What ships names what trained the model (its exams with their sha256, the encoder's hash),
  never where it lay on the machine that trained it."""
  folder = os.path.join(released["out"], shipped.DEFAULT)
  card = open(os.path.join(folder, "model_card.md")).read()
  text = open(os.path.join(folder, "bundle.json")).read()
  run_dir = os.path.dirname(released["finetune"])
  for where in (run_dir, tiny_cohort.root, os.path.dirname(tiny_cohort.root)):
    assert where not in card and where not in text
  bundle = json.loads(text)
  t = bundle["training"]
  exam = tiny_cohort.select(labelled=True)[0]
  assert t["exam_files"][f"{exam.exam_id}/FLAIR"] == shipped.sha256(exam.images["FLAIR"])
  assert len(t["encoder_sha256"]) == 64 and "provenance:" in card


def test_release_refuses_to_resume_a_workdir_of_another_run(released, tiny_cohort, tmp_path):
  run_dir = os.path.dirname(released["finetune"])
  config = load_config("release", "smoke", labelled=tiny_cohort.root, out=str(tmp_path / "o"),
                       **{"model.dtype": "float32", "finetune.steps": 5})
  with pytest.raises(errors.InvalidInputError, match="finetune.steps: 3 there, 5 here"):
    release.run(config, run_dir)
  assert not os.path.exists(tmp_path / "o")
  # an option the recorded run did not have, turned on here, is another run too
  recorded = json.load(open(os.path.join(run_dir, "release_run.json")))
  older = tmp_path / "older"
  older.mkdir()
  del recorded["config"]["data"]["renormalise"]
  json.dump(recorded, open(older / "release_run.json", "w"))
  config = load_config("release", "smoke", labelled=tiny_cohort.root, out=str(tmp_path / "o"),
                       **{"model.dtype": "float32", "data.renormalise": True})
  with pytest.raises(errors.InvalidInputError, match="data.renormalise: None there, True here"):
    release.run(config, str(older))


def test_the_chosen_threshold_and_lesion_peak_go_into_the_bundle_its_hash_and_card(released,
                                                                                   tmp_path):
  folder = str(tmp_path / "m")
  bundle = export_lib.export(released["finetune"], folder, "m", threshold=0.45,
                             calibration="by Dice", lesion_peak=(0.8, "by lesion F1"))
  assert (bundle["threshold"], bundle["min_lesion_peak"]) == (0.45, 0.8)
  card = open(os.path.join(folder, "model_card.md")).read()
  assert "- threshold 0.45: by Dice" in card
  assert "- lesion peak 0.8: a predicted lesion is kept only where one of its voxels reaches " \
         "it; by lesion F1" in card
  path = os.path.join(folder, "bundle.json")
  edited = dict(json.load(open(path)), min_lesion_peak=0.0)
  json.dump(edited, open(path, "w"))
  with pytest.raises(errors.InvalidInputError, match="edited after it was made"):
    shipped.read_bundle(folder)


def test_an_edited_or_unknown_format_bundle_is_refused_by_name(released, tmp_path):
  """bundle.json is covered by its own hash (threshold, landmarks, config): an edit is refused
  naming the file, as is a format this msjax does not know."""
  for change, match in ((lambda b: b.update(threshold=0.05), "edited after it was made"),
                        (lambda b: b.update(format=99), "format 99")):
    folder = str(tmp_path / f"m{len(os.listdir(tmp_path))}")
    shutil.copytree(os.path.join(released["out"], shipped.DEFAULT), folder)
    path = os.path.join(folder, "bundle.json")
    bundle = json.load(open(path))
    change(bundle)
    json.dump(bundle, open(path, "w"))
    for load in (shipped.read_bundle, bundle_lib.read):
      with pytest.raises(errors.InvalidInputError, match=match) as e:
        load(folder)
      assert "bundle.json" in str(e.value)


def test_card_results_turn_figure_links_into_repository_paths_and_a_missing_file_is_refused(
    tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  (tmp_path / "pyproject.toml").write_text("")  # the checkout's root, wherever msjax is installed
  (tmp_path / "docs" / "results").mkdir(parents=True)
  (tmp_path / "docs" / "results" / "claim.md").write_text(
      "# The claim\n\n| a |\n\n![Dice per strategy](claim.png)\n![up](../figures/u.png)\n"
      "![web](https://example.org/w.png)\n")
  text = release.card_results(str(tmp_path / "docs" / "results" / "claim.md"))  # absolute
  assert text.startswith("### The claim") and "![Dice" not in text and str(tmp_path) not in text
  assert "Figure (Dice per strategy): docs/results/claim.png (in the repository)" in text
  assert "Figure (up): docs/figures/u.png (in the repository)" in text
  assert "![web](https://example.org/w.png)" in text  # a link that works anywhere stays
  with pytest.raises(errors.InvalidInputError, match="docs/results/gone.md: .*no such file"):
    release.card_results("docs/results/claim.md,docs/results/gone.md")


def test_the_release_config_names_results_files_that_exist():
  config = load_config("release")
  assert load_config("release", "smoke").card_results == ""  # the synthetic model has none
  for path in config.card_results.split(","):
    assert os.path.isfile(os.path.join(ROOT, path)), path


def test_a_float32_training_ships_to_run_in_the_dtype_auto_picks(released, tmp_path):
  """release.shipped_dtype: the bundle's compute dtype (what segment runs) is 'auto' whatever the
  training's; the training's is kept in the record and said in the card."""
  from msjax.infer import export as export_lib
  folder = str(tmp_path / "m")
  bundle = export_lib.export(released["finetune"], folder, "m", compute_dtype="auto")
  assert bundle["config"]["model"]["dtype"] == "auto" and bundle["model"]["dtype"] == "auto"
  assert bundle["training"]["trained_dtype"] == "float32"
  assert "compute dtype auto (trained in float32)" in open(os.path.join(folder, "model_card.md")
                                                          ).read()
  params, read = shipped.load_params(folder)  # the sealed bundle reads back, weights fit
  assert read["config"]["model"]["dtype"] == "auto" and len(jax_leaves(params)) > 0
  kept = export_lib.export(released["finetune"], str(tmp_path / "k"), "k")
  assert kept["config"]["model"]["dtype"] == "float32" and "trained_dtype" not in kept["training"]
  assert load_config("release").shipped_dtype == "auto"
  with pytest.raises(errors.InvalidInputError, match="'bf16'.*float32, bfloat16, auto"):
    export_lib.export(released["finetune"], str(tmp_path / "b"), "b", compute_dtype="bf16")
  # where it ships to is not what it trains: a workdir is resumed whatever shipped_dtype says
  a = load_config("release")
  b = load_config("release", shipped_dtype="")
  assert release.fingerprint(a) == release.fingerprint(b)


def jax_leaves(tree):
  import jax
  return jax.tree.leaves(tree)


def test_card_only_writes_the_card_again_and_leaves_the_weights(released, tmp_path):
  out = tmp_path / "shipped"
  shutil.copytree(released["out"], out)
  folder = out / shipped.DEFAULT
  before = {n: (folder / n).read_bytes() for n in ("bundle.json", "weights.npz")}
  (tmp_path / "claim.md").write_text("# The finding\n\nTransfer leads by 2.3 points.\n")
  config = load_config("release", "smoke", out=str(out), card_only=True,
                       card_results=str(tmp_path / "claim.md"))
  release.run(config, str(tmp_path / "unused"))
  card = (folder / "model_card.md").read_text()
  assert "### The finding" in card and "Transfer leads by 2.3 points." in card
  assert "LEAD:" not in card and "not a medical device" in card
  assert {n: (folder / n).read_bytes() for n in before} == before  # weights and bundle untouched
  assert not (tmp_path / "unused").exists()  # no training, no workdir
  with pytest.raises(errors.InvalidInputError, match="gone.md"):
    release.run(load_config("release", "smoke", out=str(out), card_only=True,
                            card_results=str(tmp_path / "gone.md")), str(tmp_path / "unused"))


def test_an_encoder_pretrained_in_another_workdir_ships_with_its_exam_list(released, tmp_path):
  """release --config.pretrained=<pretraining workdir>: the encoder's card lists the exams its
  checkpoint's cohort held, as for one pretrained in the release itself; a cohort file that is
  gone leaves the list out (with a warning) rather than inventing one."""
  record = release._pretraining_record(released["pretrain"])
  cohort = checkpoint.run_meta(released["pretrain"])["config"]["data"]["cohort"]
  want = sorted(e["exam_id"] for e in json.load(open(cohort))["exams"])
  assert record == {"exams": want, "pretraining_scans": len(want)} and want
  moved = tmp_path / "pretrain"
  shutil.copytree(released["pretrain"], moved)
  meta_file = next(moved.glob("checkpoints/*/meta/metadata"))
  meta = json.load(open(meta_file))
  meta["config"]["data"]["cohort"] = str(tmp_path / "gone.json")
  json.dump(meta, open(meta_file, "w"))
  assert release._pretraining_record(str(moved)) == {}

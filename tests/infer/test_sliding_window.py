"""Patch samplers for whole-volume inference (msjax/infer/sliding_window.py)."""
import numpy as np

from msjax.infer import sliding_window


def test_sliding_window_covers_everything():
  corners = sliding_window.sliding_window_corners((40, 33, 16), 16, 0.5)
  cover = np.zeros((40, 33, 16), int)
  for c in corners:
    cover[c[0]:c[0] + 16, c[1]:c[1] + 16, c[2]:c[2] + 16] += 1
  assert cover.min() >= 1 and corners.max(0).tolist() == [24, 17, 0]
  w = sliding_window.gaussian_weight(16)
  assert w.max() == 1.0 and w.min() > 0 and w[8, 8, 8] > w[0, 0, 0]


def test_predict_volume_averages_overlaps_and_reports_spread():
  images = np.zeros((24, 24, 24, 1), np.float32)
  calls = []

  def fake(batch):  # patch k predicts the constant k (per call)
    calls.append(len(batch))
    return np.stack([np.full(batch.shape[1:4], float(len(calls) * 10 + i), np.float32)
                     for i in range(len(batch))])

  corners = np.array([[0, 0, 0], [8, 0, 0]], np.int32)
  pred = sliding_window.predict_volume(fake, images, corners, 16, batch_size=4,
                                       weighting="uniform")
  assert calls == [4]  # padded to the compiled batch size
  np.testing.assert_allclose(pred.probability[10, 0, 0], 10.5)  # mean of 10 and 11
  np.testing.assert_allclose(pred.spread[10, 0, 0], 0.5)
  assert pred.probability[2, 0, 0] == 10 and pred.spread[2, 0, 0] == 0
  assert pred.coverage[20, 20, 20] == 0 and pred.probability[20, 20, 20] == 0  # uncovered


def test_random_sampler_stays_in_brain():
  brain = np.zeros((40, 40, 40), np.uint8)
  brain[8:32, 8:32, 8:32] = 1
  corners = sliding_window.random_brain_corners(brain, 16, 150, seed=0)
  assert len(corners) == 150
  for c in corners[:20]:
    assert brain[c[0]:c[0] + 16, c[1]:c[1] + 16, c[2]:c[2] + 16].mean() >= 0.75


def test_sliding_window_skips_patches_without_brain_and_keeps_the_brain_s_prediction():
  rng = np.random.default_rng(0)
  brain = np.zeros((48, 48, 48), np.uint8)
  brain[10:30, 12:34, 8:28] = 1
  images = rng.standard_normal((48, 48, 48, 2)).astype(np.float32)

  def fake(batch):  # any deterministic function of the patch
    return np.tanh(batch[..., 0] * 0.3 + batch[..., 1:].mean(-1, keepdims=False)) * 0.5 + 0.5
  full = sliding_window.sliding_window_corners(brain.shape, 16, 0.5)
  skipped = sliding_window.sliding_window_corners(brain.shape, 16, 0.5, brain=brain)
  assert 0 < len(skipped) < len(full)
  a = sliding_window.predict_volume(fake, images, full, 16, 4)
  b = sliding_window.predict_volume(fake, images, skipped, 16, 4)
  inside = brain > 0
  np.testing.assert_allclose(a.probability[inside], b.probability[inside], rtol=1e-6)
  np.testing.assert_allclose(a.spread[inside], b.spread[inside], rtol=1e-5, atol=1e-7)
  assert (b.coverage[inside] > 0).all()


def test_spread_flips_show_every_interior_voxel_in_all_8_flips_and_map_back():
  """predict.flips='spread': each window gets one flip by its place; with 50 % overlap every
  voxel inside the volume is seen in all 8, and each prediction is mirrored back onto its
  window (a network that returns its input channel gives the input back exactly)."""
  shape, patch = (48, 48, 48), 16
  corners = sliding_window.sliding_window_corners(shape, patch, 0.5)
  flips = sliding_window.spread_flips(corners)
  seen = np.zeros(shape + (8,), bool)
  for c, f in zip(corners, flips):
    sl = tuple(slice(int(v), int(v) + patch) for v in c)
    seen[sl + (int(f[0]) * 4 + int(f[1]) * 2 + int(f[2]),)] = True
  interior = (slice(patch // 2, -patch // 2),) * 3
  assert seen[interior].all()  # all 8 flips at every interior voxel
  assert len({tuple(f) for f in flips}) == 8
  rng = np.random.default_rng(0)
  images = rng.random(shape + (2,)).astype(np.float32)
  pred = sliding_window.predict_volume(lambda x: x[..., 0], images, corners, patch, 5,
                                       flips=flips)
  np.testing.assert_allclose(pred.probability, images[..., 0], atol=1e-6)
  # a network that is not mirror-symmetric: flipped windows are seen flipped (and mapped back)
  ramp = lambda x: np.broadcast_to(np.arange(patch, dtype=np.float32)[:, None, None],  # noqa
                                   x.shape[:4]).copy()
  plain = sliding_window.predict_volume(ramp, images, corners, patch, 5)
  spread = sliding_window.predict_volume(ramp, images, corners, patch, 5, flips=flips)
  assert not np.allclose(plain.probability, spread.probability)


def test_offset_windows_share_one_half_overlap_window_out_over_the_eight_phases():
  """predict.phase_windows='offset': phase k's windows lie a patch apart, moved half a patch
  along the axes of k's bits; each phase covers every voxel, and the 8 phases together hold the
  windows of one 50 % overlap sliding window (on a volume a whole number of half patches)."""
  shape, patch = (64, 48, 32), 16
  union = set()
  for phase in range(8):
    corners = sliding_window.offset_window_corners(shape, patch, phase)
    cover = np.zeros(shape, int)
    for c in corners:
      cover[c[0]:c[0] + patch, c[1]:c[1] + patch, c[2]:c[2] + patch] += 1
    assert cover.min() >= 1, phase
    moved = [bool(phase & (1 << axis)) for axis in range(3)]
    for axis in range(3):  # half a patch off the whole-patch grid exactly along k's axes
      inner = set(corners[:, axis].tolist()) - {0, shape[axis] - patch}
      assert all((s % patch == patch // 2) == moved[axis] for s in inner), (phase, axis)
    union |= set(map(tuple, corners.tolist()))
  full = set(map(tuple, sliding_window.sliding_window_corners(shape, patch, 0.5).tolist()))
  assert union == full
  brain = np.zeros(shape, np.uint8)
  brain[20:30, 20:30, 10:20] = 1
  kept = sliding_window.offset_window_corners(shape, patch, 5, brain=brain)
  assert 0 < len(kept) < len(sliding_window.offset_window_corners(shape, patch, 5))


def test_central_windows_keep_each_brain_voxel_s_most_central_window_and_drop_the_rim_s():
  """windows='central': a window stays when it is the most central window (its centre nearest,
  axis by axis) of some brain voxel, so every brain voxel keeps the window whose importance peaks
  nearest it; windows that only graze the brain go. A ball in a 64³ volume, 16³ windows."""
  shape, patch = (64, 64, 64), 16
  z, y, x = np.ogrid[:64, :64, :64]
  brain = ((z - 30) ** 2 + (y - 33) ** 2 + (x - 31) ** 2 <= 22 ** 2).astype(np.uint8)
  touching = sliding_window.sliding_window_corners(shape, patch, 0.5, brain=brain)
  central = sliding_window.sliding_window_corners(shape, patch, 0.5, brain=brain, central=True)
  assert set(map(tuple, central)) < set(map(tuple, touching))
  assert len(central) < 0.85 * len(touching)
  kept = {tuple(c) for c in central}
  centres = np.unique(touching[:, 0]) + (patch - 1) / 2.0  # the same starts on every axis
  for voxel in np.argwhere(brain > 0)[::97]:
    best = tuple(int(centres[np.abs(centres - v).argmin()] - (patch - 1) / 2.0) for v in voxel)
    assert best in kept, (voxel, best)
  ends = [c for c in touching if tuple(c) not in kept]  # each dropped window grazes the brain
  grazed = [brain[tuple(slice(int(v) + patch // 4, int(v) + 3 * patch // 4) for v in c)].mean()
            for c in ends]
  assert len(ends) > 0 and max(grazed) == 0  # (their central half: no brain)

"""Segmentation losses (msjax/train/losses.py)."""
import numpy as np


class _Interrupted(Exception):
  pass


def test_dice_bce_keeps_a_gradient_where_soft_dice_has_collapsed():
  """All outputs saturated to 'no lesion': soft Dice is flat there, Dice + BCE is not."""
  import jax
  import jax.numpy as jnp

  from msjax.train import losses
  logits = jnp.full((2, 8, 8, 8, 1), -20.0)
  target = jnp.zeros((2, 8, 8, 8, 1)).at[:, 2:4, 2:4, 2:4].set(1.0)
  g_dice = jax.grad(lambda z: losses.soft_dice_loss(z, target))(logits)
  g_both = jax.grad(lambda z: losses.dice_bce_loss(z, target))(logits)
  assert float(jnp.abs(g_dice).max()) < 1e-7
  lesion = target > 0
  assert float(-g_both[lesion].max()) > 1e-4  # pushes lesion logits up
  np.testing.assert_allclose(float(losses.dice_bce_loss(jnp.full_like(target, 30.0) * (
      2 * target - 1), target)), 0.0, atol=1e-3)  # confident and right: ~0


def _two_lesion_patch():
  """One 8³ patch (as a batch of 1) with a 64-voxel lesion and a 1-voxel one."""
  import jax.numpy as jnp

  from msjax.data import lesions
  target = np.zeros((1, 8, 8, 8, 1), np.float32)
  target[0, 0:4, 0:4, 0:4] = 1.0
  target[0, 6, 6, 6] = 1.0
  return jnp.asarray(target), jnp.asarray(lesions.blob_labels(target[0, ..., 0])[None])


def test_blob_term_weighs_a_one_voxel_lesion_as_a_large_one():
  """Missing the 1-voxel lesion costs the blob term half its range, the batch Dice ~3 %."""
  import jax.numpy as jnp

  from msjax.train import losses
  target, blobs = _two_lesion_patch()
  assert int(blobs.max()) == 2
  sure = 30.0 * (2 * target - 1)                          # both lesions right
  small_missed = jnp.where(target > 0, sure, -30.0).at[0, 6, 6, 6].set(-30.0)
  assert float(losses.blob_dice_loss(sure, blobs)) < 0.02
  np.testing.assert_allclose(float(losses.blob_dice_loss(small_missed, blobs)), 0.5, atol=0.02)
  assert float(losses.soft_dice_loss(small_missed, target)) < 0.03


def test_blob_term_counts_a_false_positive_in_every_lesion_s_region_but_not_the_other_lesion():
  import jax.numpy as jnp

  from msjax.train import losses
  target, blobs = _two_lesion_patch()
  sure = 30.0 * (2 * target - 1)
  # predicting the large lesion is not a false positive for the small one: only background is
  assert float(losses.blob_dice_loss(sure, blobs)) < 0.02
  background_fp = sure.at[0, 7, 0:8, 0].set(30.0)          # 8 false voxels in the background
  assert float(losses.blob_dice_loss(background_fp, blobs)) > 0.3  # the 1-voxel lesion's Dice
  # the mixed loss is the batch's Dice + BCE plus half the blob term, and differentiable
  mixed = losses.dice_bce_blob_loss(background_fp, target, blobs)
  np.testing.assert_allclose(float(mixed), float(losses.dice_bce_loss(background_fp, target)) +
                             0.5 * float(losses.blob_dice_loss(background_fp, blobs)), rtol=1e-5)
  no_lesion = jnp.zeros_like(blobs)
  assert float(losses.blob_dice_loss(sure, no_lesion)) == 0.0  # no lesion, no blob term


def test_blob_labels_number_lesions_and_lump_the_rest():
  from msjax.data import lesions
  mask = np.zeros((12, 12, 12), np.float32)
  mask[::2, ::2, ::2] = 1.0                                # 216 separate voxels
  labels = lesions.blob_labels(mask, max_blobs=5)
  assert labels.dtype == np.uint8 and labels.max() == 6
  assert sorted(np.unique(labels)) == [0, 1, 2, 3, 4, 5, 6]
  assert (labels[mask == 0] == 0).all() and (labels[mask > 0] > 0).all()
  assert (labels == 6).sum() == 216 - 5


def test_tversky_is_soft_dice_at_one_half_and_charges_a_miss_more_than_a_false_voxel():
  """α = β = 1/2 gives soft Dice back; with the loss's α 0.3, β 0.7, marking 8 lesion voxels too
  few costs more than marking 8 too many (the recall tilt), and a right answer costs ~0."""
  import jax.numpy as jnp

  from msjax.train import losses
  target = jnp.zeros((1, 8, 8, 8, 1)).at[:, 2:6, 2:6, 2:6].set(1.0)  # 64 voxels
  sure = 30.0 * (2 * target - 1)
  half_wrong = sure.at[:, 2:6, 2:6, 2:3].set(-30.0)
  np.testing.assert_allclose(float(losses.tversky_loss(half_wrong, target, 0.5, 0.5)),
                             float(losses.soft_dice_loss(half_wrong, target)), rtol=1e-6)
  missed = sure.at[:, 2:4, 2:4, 2:4].set(-30.0)     # 8 lesion voxels called background
  extra = sure.at[:, 6:8, 6:8, 6:8].set(30.0)       # 8 background voxels called lesion
  assert float(losses.tversky_loss(missed, target)) > 2 * float(losses.tversky_loss(extra, target))
  assert float(losses.tversky_bce_loss(sure, target)) < 1e-3

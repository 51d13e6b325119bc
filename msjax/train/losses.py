"""Losses and the batch Dice used for monitoring."""
import jax
import jax.numpy as jnp
import optax

from msjax.data import lesions


def soft_dice_loss(logits, target, smooth: float = 1.0):
  """1 - soft Dice of sigmoid probabilities vs the target, over the whole batch (one loss)."""
  p = jax.nn.sigmoid(logits.astype(jnp.float32))
  t = target.astype(jnp.float32)
  inter = jnp.sum(p * t)
  return 1.0 - (2.0 * inter + smooth) / (jnp.sum(p) + jnp.sum(t) + smooth)


def _bce(logits, target):
  """Mean binary cross-entropy of the logits against the target, in float32."""
  return jnp.mean(optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32),
                                                     target.astype(jnp.float32)))


def dice_bce_loss(logits, target):
  """Soft Dice + binary cross-entropy (nnU-Net's default). The cross-entropy keeps a gradient
  when every output has saturated to "no lesion", where soft Dice alone goes flat: with a few mL
  of lesion per brain, a large early step can push the network there and leave it."""
  return soft_dice_loss(logits, target) + _bce(logits, target)


def tversky_loss(logits, target, alpha: float = 0.3, beta: float = 0.7, smooth: float = 0.5):
  """1 - Tversky index (Salehi et al., MLMI 2017, "Tversky loss function for image segmentation
  using 3D fully convolutional deep networks", shown on MS lesions): TP / (TP + α FP + β FN) over
  the batch. α = β = 1/2 is soft Dice; β > α makes a missed lesion voxel cost more than a false
  one, the trade the paper found best for MS lesions (α 0.3, β 0.7) and the one a model that
  marks the right voxels but too few of them needs. `smooth` 1/2 is soft_dice_loss's 1 (its
  numerator and denominator are twice this one's)."""
  p = jax.nn.sigmoid(logits.astype(jnp.float32))
  t = target.astype(jnp.float32)
  tp = jnp.sum(p * t)
  fp = jnp.sum(p * (1.0 - t))
  fn = jnp.sum((1.0 - p) * t)
  return 1.0 - (tp + smooth) / (tp + alpha * fp + beta * fn + smooth)


def tversky_bce_loss(logits, target):
  """Tversky (α 0.3, β 0.7) + binary cross-entropy: dice_bce with the Dice term tilted to recall;
  the cross-entropy is kept for the same reason as there."""
  return tversky_loss(logits, target) + _bce(logits, target)


BLOB_OTHER = lesions.MAX_BLOBS + 1  # lesions.blob_labels' label for the lesions past MAX_BLOBS


def blob_dice_loss(logits, blobs, smooth: float = 1e-5):
  """The instance term of blob loss (Kofler et al., IPMI 2023, "blob loss: instance imbalance
  aware loss functions for semantic segmentation", shown on MS lesions): 1 - soft Dice of each
  lesion of each patch alone, over the patch with the other lesions masked out (a prediction on
  another lesion is neither credit nor false positive for this one), averaged over the lesions.
  A lesion of 10 voxels weighs as much as a confluent cap of 10,000, where the batch's one
  soft Dice weighs them by their voxels. `smooth` is MONAI's (the blob loss code's): the batch
  Dice's 1 would let a missed 1-voxel lesion cost half. blobs: (B, X, Y, Z) int, the mask's
  6-connected components numbered by lesions.blob_labels."""
  p = jax.nn.sigmoid(logits.astype(jnp.float32)).reshape(logits.shape[0], -1)
  b = blobs.reshape(blobs.shape[0], -1).astype(jnp.int32)
  n_seg = BLOB_OTHER + 1
  ids = b + n_seg * jnp.arange(b.shape[0])[:, None]  # one segment per (patch, label)
  tp = jax.ops.segment_sum(p.ravel(), ids.ravel(), b.shape[0] * n_seg).reshape(-1, n_seg)
  size = jax.ops.segment_sum(jnp.ones_like(p.ravel()), ids.ravel(),
                             b.shape[0] * n_seg).reshape(-1, n_seg)
  background_p = tp[:, :1]       # probability mass on the patch's background
  tp, size = tp[:, 1:BLOB_OTHER], size[:, 1:BLOB_OTHER]
  dice = (2.0 * tp + smooth) / (tp + background_p + size + smooth)
  present = size > 0
  n = jnp.maximum(jnp.sum(present), 1)
  return jnp.sum(jnp.where(present, 1.0 - dice, 0.0)) / n


def dice_bce_blob_loss(logits, target, blobs):
  """dice_bce over the batch plus the blob term (blob loss's own weights, α = 2 for the whole and
  β = 1 for the lesions, in nnU-Net's Dice + cross-entropy units: 1 and 1/2)."""
  return dice_bce_loss(logits, target) + 0.5 * blob_dice_loss(logits, blobs)


SEGMENTATION_LOSSES = {"dice": soft_dice_loss, "dice_bce": dice_bce_loss,
                       "dice_bce_blob": dice_bce_blob_loss, "tversky_bce": tversky_bce_loss}
NEEDS_BLOBS = frozenset({"dice_bce_blob"})  # losses that take the data stage's blob labels


def hard_dice(logits, target):
  """Dice of the thresholded prediction (probability >= 0.5); 1 when both are empty."""
  pred = logits >= 0
  t = target > 0.5
  tp = jnp.sum(pred & t)
  denom = jnp.sum(pred) + jnp.sum(t)
  return jnp.where(denom > 0, 2.0 * tp / jnp.maximum(denom, 1), 1.0)


def position_mse(pred, target):
  return jnp.mean(jnp.square(pred.astype(jnp.float32) - target))

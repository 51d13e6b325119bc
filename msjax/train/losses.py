"""Losses and the batch Dice used for monitoring."""
import jax
import jax.numpy as jnp
import optax


def soft_dice_loss(logits, target, smooth: float = 1.0):
  """1 - soft Dice of sigmoid probabilities vs the target, over the whole batch (one loss)."""
  p = jax.nn.sigmoid(logits.astype(jnp.float32))
  t = target.astype(jnp.float32)
  inter = jnp.sum(p * t)
  return 1.0 - (2.0 * inter + smooth) / (jnp.sum(p) + jnp.sum(t) + smooth)


def dice_bce_loss(logits, target):
  """Soft Dice + binary cross-entropy (nnU-Net's default). The cross-entropy keeps a gradient
  when every output has saturated to "no lesion", where soft Dice alone goes flat: with a few mL
  of lesion per brain, a large early step can push the network there and leave it."""
  t = target.astype(jnp.float32)
  bce = jnp.mean(optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32), t))
  return soft_dice_loss(logits, target) + bce


SEGMENTATION_LOSSES = {"dice": soft_dice_loss, "dice_bce": dice_bce_loss}


def hard_dice(logits, target):
  """Dice of the thresholded prediction (probability >= 0.5); 1 when both are empty."""
  pred = logits >= 0
  t = target > 0.5
  tp = jnp.sum(pred & t)
  denom = jnp.sum(pred) + jnp.sum(t)
  return jnp.where(denom > 0, 2.0 * tp / jnp.maximum(denom, 1), 1.0)


def position_mse(pred, target):
  return jnp.mean(jnp.square(pred.astype(jnp.float32) - target))

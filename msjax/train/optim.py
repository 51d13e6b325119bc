"""Optimiser and freezing: strategy -> path rules -> label tree -> the trainable and frozen parts
of the parameters (`split_frozen` / `merge_frozen`). The training step differentiates and
optimises only the trainable part; the frozen part enters the loss as constants.

Strategy NCF freezes conv1..convN (kernels and biases) and every norm applied before conv(N+1) in
forward order, i.e. encoder/norm2..norm(N+1) (the norm k prepares the input of conv k, so those
norms only feed frozen convs). `freeze_norms=False` leaves norms trainable
(a literal Keras-style freeze of the conv layers only). VAN and 0CF freeze nothing.
"""
from __future__ import annotations

import jax
import optax
from absl import logging
from flax import traverse_util

from msjax import errors
from msjax import rules as rules_lib
from msjax.models import paths
from msjax.models.isensee import LEVELS

TRAINABLE, FROZEN = "trainable", "frozen"
NUM_CONVS = 3 * LEVELS  # conv1..conv15


def parse_strategy(freeze) -> tuple[bool, int]:
  """'van' -> (no transfer, 0 frozen); 'N' / 'NCF' / N -> (transfer, N frozen)."""
  s = str(freeze).strip().upper()
  if s == "VAN":
    return False, 0
  s = s[:-2] if s.endswith("CF") else s
  if not s.isdigit() or not 0 <= int(s) <= NUM_CONVS:
    raise ValueError(f"freeze must be 'van' or a number of convs 0..{NUM_CONVS} (e.g. 0, 1, 2, 3, "
                     f"6 or '3CF'), got {freeze!r}")
  return True, int(s)


def strategy_name(freeze) -> str:
  transfer, n = parse_strategy(freeze)
  return "VAN" if not transfer else f"{n}CF"


def freeze_rules(n_frozen: int, freeze_norms: bool = True) -> list[tuple[str, str]]:
  """The frozen convs (and norms) first, then every other parameter family by name: a parameter
  of no known family matches no rule (msjax/models/paths.py)."""
  rules = []
  if n_frozen > 0:
    convs = "|".join(str(k) for k in range(1, n_frozen + 1))
    rules.append((rf"encoder/conv({convs})/(kernel|bias)", FROZEN))
    if freeze_norms:
      norms = "|".join(str(k) for k in range(2, n_frozen + 2))
      rules.append((rf"encoder/norm({norms})/(scale|bias)", FROZEN))
  rules += [(paths.conv(paths.ENCODER_CONV), TRAINABLE),
            (paths.norm(paths.ENCODER_NORM), TRAINABLE),
            (paths.conv(paths.DECODER_CONV), TRAINABLE),
            (paths.norm(paths.DECODER_NORM), TRAINABLE), (paths.conv(paths.HEAD), TRAINABLE)]
  return rules


def freeze_labels(params, n_frozen: int, freeze_norms: bool = True, log: bool = True):
  labels, _ = rules_lib.match(params, freeze_rules(n_frozen, freeze_norms), what="freezing")
  frozen = sorted(p for p, label in rules_lib.flat_paths(labels).items() if label == FROZEN)
  if log:
    logging.info("freezing %d conv(s)%s: %d frozen leaves %s", n_frozen,
                 "" if freeze_norms else " (norms trainable)", len(frozen), frozen)
  return labels, frozen


LR_SCHEDULES = {  # train.lr_schedule -> the schedule of a train config
    "isensee": lambda tc: optax.exponential_decay(
        tc.lr, transition_steps=tc.steps_per_epoch, decay_rate=tc.lr_decay, staircase=True),
    "poly": lambda tc: optax.polynomial_schedule(
        tc.lr, 0.0, power=0.9, transition_steps=max(1, int(tc.steps))),
}


def learning_rate(train_config):
  """train.lr_schedule: "isensee" (Isensee 2017: ×lr_decay per epoch of steps_per_epoch steps,
  staircase; over the real-data recipe's 800 fine-tuning steps that ends at 0.90 × lr) or "poly"
  (nnU-Net v2's PolyLRScheduler: lr × (1 - step / steps)^0.9, towards 0: the last update at
  lr × (1 / steps)^0.9). Poly makes train.steps part of the schedule: resuming a run with more
  steps lifts the rate from near 0 again (800 -> 1600 steps: to 0.54 × lr)."""
  name = train_config.get("lr_schedule", "isensee")
  if name not in LR_SCHEDULES:
    raise errors.InvalidInputError(
        f"train.lr_schedule={name!r}: not one of {', '.join(LR_SCHEDULES)}")
  return LR_SCHEDULES[name](train_config)


def split_frozen(params: dict, labels: dict) -> tuple[dict, dict]:
  """(trainable, frozen): two nested dicts holding the leaves of params labelled TRAINABLE and
  FROZEN (same paths, each leaf in exactly one of them)."""
  flat, flat_labels = traverse_util.flatten_dict(params), traverse_util.flatten_dict(labels)
  parts = {TRAINABLE: {}, FROZEN: {}}
  for path, leaf in flat.items():
    parts[flat_labels[path]][path] = leaf
  return (traverse_util.unflatten_dict(parts[TRAINABLE]),
          traverse_util.unflatten_dict(parts[FROZEN]))


def merge_frozen(trainable: dict, frozen: dict) -> dict:
  """The inverse of split_frozen: one params dict with the leaves of both."""
  return traverse_util.unflatten_dict({**traverse_util.flatten_dict(trainable),
                                       **traverse_util.flatten_dict(frozen)})


def make_optimizer(train_config, transferred=None):
  """Adam with L2 weight decay (Isensee 2017), over the trainable leaves only: the training step
  hands it the trainable part of the parameters (split_frozen), so frozen leaves carry no
  optimizer state and get no gradient at all.

  `transferred`: a tree of bools over those trainable leaves, True where the leaf came from
  pretraining; their updates are scaled by train.transferred_lr_scale (when it is not 1)."""
  parts = [optax.add_decayed_weights(train_config.weight_decay), optax.scale_by_adam(),
           optax.scale_by_learning_rate(learning_rate(train_config))]
  scale = float(train_config.get("transferred_lr_scale", 1.0))
  if transferred is not None and scale != 1.0:
    parts.append(optax.masked(optax.scale(scale), transferred))
  return optax.chain(*parts)


def transferred_mask(params: dict, labels: dict, rules) -> dict:
  """The trainable part (split_frozen by `labels`) of a bool tree: True where `rules` label the
  leaf "transfer" (transfer.TRANSFER_RULES: the encoder), logged like every other policy."""
  marks, _ = rules_lib.match(params, rules, what="transferred learning rate")
  trainable, _ = split_frozen(jax.tree.map(lambda m: m == "transfer", marks), labels)
  n = sum(jax.tree.leaves(trainable))
  logging.info("transferred learning rate: %d trainable leaves at its factor", n)
  return trainable

"""The Isensee-2017 network's shapes, parameter paths and initialisation (msjax/models/)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from ml_collections import config_dict

from msjax import rules
from msjax.models import init, isensee
from msjax.models import model as model_lib


def _cfg(base):
  return config_dict.ConfigDict(dict(base_width=base, dropout=0.3, conv_impl="xla",
                                     dtype="float32"))


def _abstract(task, base):
  _, state = nnx.split(nnx.eval_shape(isensee.constructor(task, _cfg(base))), nnx.Param)
  return {k: v.shape for k, v in rules.flat_paths(nnx.to_pure_dict(state)).items()}


def test_encoder_convs_have_spec_shapes_at_base16():
  shapes = _abstract("segmentation", 16)
  f = [16, 32, 64, 128, 256]
  expected = {1: (5, 16)}
  for level in range(1, 6):
    first = 3 * level - 2
    if level > 1:
      expected[first] = (f[level - 2], f[level - 1])
    expected[first + 1] = expected[first + 2] = (f[level - 1], f[level - 1])
  for k in range(1, 16):
    assert shapes[f"encoder/conv{k}/kernel"] == (3, 3, 3) + expected[k], k
    assert shapes[f"encoder/conv{k}/bias"] == (expected[k][1],)
  assert "encoder/norm1/scale" not in shapes  # conv1 sees the raw input
  for k in range(2, 16):  # norm k prepares the input of conv k
    assert shapes[f"encoder/norm{k}/scale"] == (expected[k][0],)
  assert "encoder/conv16/kernel" not in shapes


def test_decoder_has_spec_shapes_at_base16():
  s = _abstract("segmentation", 16)
  for level, f in ((4, 128), (3, 64), (2, 32), (1, 16)):
    assert s[f"decoder/up{level}/conv/kernel"] == (3, 3, 3, 2 * f, f)
    assert s[f"decoder/loc{level}/conv_a/kernel"] == (3, 3, 3, 2 * f, 2 * f)
    if level > 1:
      assert s[f"decoder/loc{level}/conv_b/kernel"] == (1, 1, 1, 2 * f, f)
  assert "decoder/loc1/conv_b/kernel" not in s
  assert s["decoder/seg3/kernel"] == (1, 1, 1, 128, 1)
  assert s["decoder/seg2/kernel"] == (1, 1, 1, 64, 1)
  assert s["decoder/seg1/kernel"] == (1, 1, 1, 32, 1)
  assert "decoder/seg4/kernel" not in s
  total = sum(int(np.prod(v)) for v in s.values())
  assert 9_000_000 < total < 10_000_000  # the Isensee network at f = 16


def test_position_regressor_shares_the_encoder_tree():
  seg, reg = _abstract("segmentation", 16), _abstract("position", 16)
  enc = {k: v for k, v in seg.items() if k.startswith("encoder/")}
  assert enc == {k: v for k, v in reg.items() if k.startswith("encoder/")}
  assert reg["head/kernel"] == (256, 3)
  assert set(reg) - set(enc) == {"head/kernel", "head/bias"}


@pytest.mark.slow  # compiles the paper-size network
def test_forward_shapes_deterministic_without_rng():
  cfg = _cfg(4)
  seg = model_lib.Model(isensee.constructor("segmentation", cfg))
  reg = model_lib.Model(isensee.constructor("position", cfg))
  p_seg, p_reg = seg.init_params(), reg.init_params()
  x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 16, 16, 16, 5)), jnp.float32)
  apply = jax.jit(seg.apply)
  y = apply(p_seg, x)
  assert y.shape == (2, 16, 16, 16, 1) and y.dtype == jnp.float32 and bool(jnp.isfinite(y).all())
  np.testing.assert_array_equal(y, apply(p_seg, x))
  y_drop = apply(p_seg, x, jax.random.PRNGKey(1))
  assert not np.allclose(y, y_drop)  # dropout is active only when an rng is given
  pos = reg.apply(p_reg, x)
  assert pos.shape == (2, 3)
  np.testing.assert_array_equal(pos, 0.5)  # the zero head predicts the volume centre


def test_init_rules_glorot_kernels_zero_biases():
  s = model_lib.Model(isensee.constructor("segmentation", _cfg(4))).init_params()
  flat = rules.flat_paths(s)
  k = np.asarray(flat["encoder/conv5/kernel"])  # 3³ x 8 x 8
  limit = np.sqrt(6 / (27 * 8 + 27 * 8))
  assert np.abs(k).max() <= limit and np.abs(k).max() > 0.9 * limit
  assert not np.asarray(flat["encoder/conv5/bias"]).any()
  assert np.all(np.asarray(flat["encoder/norm5/scale"]) == 1)
  again = init.init_params(jax.eval_shape(lambda: s), seed=0)
  np.testing.assert_array_equal(rules.flat_paths(again)["encoder/conv5/kernel"], k)
  other = init.init_params(jax.eval_shape(lambda: s), seed=1)
  assert not np.array_equal(rules.flat_paths(other)["encoder/conv5/kernel"], k)

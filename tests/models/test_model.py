"""A network as a function of its parameters; test-time mirroring (msjax/models/model.py)."""
import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import config_dict

from msjax.models import isensee
from msjax.models import model as model_lib


def _net():
  cfg = config_dict.ConfigDict(dict(base_width=2, dropout=0.3, conv_impl="xla", dtype="float32"))
  model = model_lib.Model(isensee.constructor("segmentation", cfg))
  x = jax.random.normal(jax.random.key(1), (2, 16, 16, 16, 5), jnp.float32)
  return model, model.init_params(), x


def test_mirroring_averages_the_eight_flips_each_flipped_back():
  model, params, x = _net()
  assert len(set(model_lib.MIRRORS)) == 8
  plain = model_lib.make_predict(model, "segmentation")
  mirrored = model_lib.make_predict(model, "segmentation", mirror=True)
  by_hand = np.mean([np.flip(plain(params, jnp.flip(x, axes)), axes) if axes else plain(params, x)
                     for axes in model_lib.MIRRORS], axis=0)
  np.testing.assert_allclose(mirrored(params, x), by_hand, atol=1e-6)
  # the network alone is not flip-equivariant, the mirrored prediction is: flipping the input
  # flips the output, which only holds when every flip was undone before averaging
  for axes in ((1,), (2, 3), (1, 2, 3)):
    flipped_in = np.asarray(mirrored(params, jnp.flip(x, axes)))
    np.testing.assert_allclose(flipped_in, np.flip(np.asarray(mirrored(params, x)), axes),
                               atol=1e-6)
  assert not np.allclose(plain(params, jnp.flip(x, (1,))), np.flip(plain(params, x), 1), atol=1e-4)

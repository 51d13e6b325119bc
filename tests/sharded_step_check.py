"""Run by tests/test_parallel.py in a subprocess with 8 fake CPU devices: one data-parallel step
(dropout on, shardings pinned) must equal the single-device step on the same global batch, and
validation's predict, split over the devices, the single-device predict."""
import json
import sys

import jax
import numpy as np
import optax

from msjax import config_base, parallel
from msjax.models import isensee
from msjax.models import model as model_lib
from msjax.train import optim, steps

assert jax.device_count() == 8, jax.devices()
model_cfg = config_base.model(base_width=4, dropout=0.3)
model = model_lib.Model(isensee.constructor("segmentation", model_cfg))
params = model.init_params()
labels, _ = optim.freeze_labels(params, 1, log=False)
# SGD with lr 1: the update IS the gradient, so this compares gradients. (Adam's first update is
# ~lr·sign(g): leaves whose exact gradient is 0, e.g. conv biases feeding an instance norm, get
# noise signs either way.)
tx = optax.sgd(1.0)
rng = np.random.default_rng(0)
batch = {"image": rng.standard_normal((16, 16, 16, 16, 5)).astype(np.float32),
         "mask": (rng.random((16, 16, 16, 16, 1)) > 0.9).astype(np.float32)}
key = jax.random.PRNGKey(0)
host_state = jax.device_get(steps.init_state(params, tx, labels))

single = jax.device_put(host_state, jax.devices()[0])
single, m1 = steps.make_train_step(model, "segmentation", tx, labels)(
    single, jax.device_put(batch, jax.devices()[0]), key)

mesh = parallel.data_mesh()
sharded = parallel.replicate(host_state, mesh)
gbatch = parallel.global_batch(batch, mesh)
spec = gbatch["image"].sharding.spec
shards = {s.data.shape for s in gbatch["image"].addressable_shards}
step8 = steps.make_train_step(model, "segmentation", tx, labels, mesh=mesh)
compiled = step8.lower(sharded, gbatch, key).compile()
in_state, in_batch, _ = compiled.input_shardings[0]
out_state, out_metrics = compiled.output_shardings
pinned = {"in_batch": sorted({str(s.spec) for s in jax.tree.leaves(in_batch)}),
          "in_state": sorted({str(s.spec) for s in jax.tree.leaves(in_state)}),
          "out": sorted({str(s.spec) for s in jax.tree.leaves((out_state, out_metrics))})}
sharded, m8 = step8(sharded, gbatch, key)

updates_1 = jax.tree.map(lambda n, o: np.asarray(n) - o, single["params"], host_state["params"])
updates_8 = jax.tree.map(lambda n, o: np.asarray(n) - o, sharded["params"], host_state["params"])
scale = max(float(np.abs(u).max()) for u in jax.tree.leaves(updates_1))
rel = max(float(np.abs(a - b).max()) for a, b in
          zip(jax.tree.leaves(updates_1), jax.tree.leaves(updates_8))) / scale

# validation's predict: 12 patches (padded to 16) split over the 8 devices, against one device
from msjax.train.validate import Validator  # noqa: E402
v = Validator.__new__(Validator)
v.mesh, v.params = mesh, parallel.replicate(host_state["params"], mesh)
v._predict = model_lib.make_predict(model, "segmentation", mesh=mesh)
images = batch["image"][:12]
split = v.predict(images)
one = np.asarray(model_lib.make_predict(model, "segmentation")(host_state["params"], images))
predict_in = v._predict.lower(v.params, parallel.shard_batch(images[:8], mesh)).compile() \
    .input_shardings[0][1]
json.dump({"rel_params": rel, "loss_single": float(m1["loss"]), "loss_sharded": float(m8["loss"]),
           "grad_norm_single": float(m1["grad_norm"]), "grad_norm_sharded": float(m8["grad_norm"]),
           "spec": str(spec), "shard_shapes": sorted(map(list, shards)),
           "n_devices": len(gbatch["image"].sharding.device_set),
           "params_sharding": str(sharded["params"]["decoder"]["seg1"]["kernel"].sharding.spec),
           "pinned": pinned, "predict_in_spec": str(predict_in.spec),
           "predict_rel": float(np.abs(split - one).max() / np.abs(one).max()),
           "predict_shape": list(split.shape)},
          sys.stdout)

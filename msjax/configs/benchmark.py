"""Compiled patch throughput, at the paper's configuration by default (base width 16, 5x32³
patches, batch 12), in float32 and bfloat16, beside a PyTorch reference of the same network in
float32 and bf16 autocast (`pip install -e '.[bench]'`). On a GPU or TPU the same command runs
unchanged (the device is auto-detected)."""
from ml_collections import config_dict

from msjax import config_base


def get_config(variant: str = ""):
  v = config_base.variants(variant, "smoke")
  c = config_dict.ConfigDict()
  c.mode = "benchmark"
  c.base_width = 16
  c.patch_size = 32
  c.batch_size = 12          # train steps
  c.infer_batch = 12         # inference forward
  c.functions = "train_seg,train_pretrain,infer"  # what to time (the PyTorch side times all)
  # train_seg once per fine-tuning strategy, side by side: VAN (0CF does the same work) and nCF
  # (the first n convs frozen: no weight gradient for them, no input gradient below conv n+1)
  c.strategies = "van,3,6"
  c.dtypes = "float32,bfloat16"  # every dtype runs with the first conv_impl
  c.conv_impls = "onednn,fold"  # the first is the headline; the others run in float32 beside it
  c.torch_settings = "float32,bf16,bf16_cl3d"  # bf16 = autocast; cl3d = channels_last_3d
  # bf16 on a CPU without bf16 instructions (AVX2) is emulated, far slower than float32 on both
  # sides (PyTorch's did not finish 3 steps in 280 s): skipped there unless this is on
  c.emulated_bf16 = False
  c.warmup = 1
  c.repeats = 5
  c.matmul_size = 2048
  c.volume = True            # whole-volume inference of one exam
  c.volume_shape = (128, 128, 128)
  c.overlap = 0.5
  c.profile = True           # op-category profile of the headline train_seg, train_pretrain and
                             # infer steps (+ PNG each)
  c.torch = True             # time the PyTorch reference when it is installed
  # the headline again in rounds timing both sides back to back (benchmark.paired_rounds): the
  # machine drifts 10-20 % within minutes, more than the ratio's margin (docs/benchmark.md)
  c.paired_rounds = 5
  if "smoke" in v:
    # 32³ even here: at 16³ the bottleneck is 1³, where PyTorch refuses instance norm in training
    c.base_width, c.patch_size, c.batch_size, c.infer_batch = 4, 32, 2, 2
    c.conv_impls, c.warmup, c.repeats, c.matmul_size = "onednn", 0, 2, 256
    c.strategies = "van,3"
    c.torch_settings = "float32,bf16"
    c.emulated_bf16 = True  # tiny: run every path on every CPU
    c.volume_shape = (48, 48, 48)
    c.paired_rounds = 2
  return config_base.finish(c, v)

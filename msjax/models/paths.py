"""The parameter paths of msjax's networks, by family: the contract that the initialisation,
freezing and transfer rules (msjax/models/init.py, msjax/train/optim.py, msjax/train/transfer.py)
are written in. Those rule lists name these families and nothing else (no catch-all `.*`), so a
parameter added to a network outside them matches no rule and `rules.match` raises, naming it.

  encoder/conv{1..15}/{kernel,bias}     conv k in forward order (stride-2 convs: 4, 7, 10, 13)
  encoder/norm{2..15}/{scale,bias}      the instance norm that prepares the input of conv k
  decoder/up{4..1}/{norm,conv}          upsampling modules
  decoder/loc{4..2}/{norm_a,conv_a,norm_b,conv_b}, decoder/loc1/{norm_a,conv_a}
  decoder/seg{3,2,1}/{kernel,bias}      deep-supervision 1³ segmentation layers
  head/{kernel,bias}                    position regressor only (discarded at transfer)
"""

ENCODER_CONV = r"encoder/conv\d+"
ENCODER_NORM = r"encoder/norm\d+"
DECODER_CONV = r"decoder/(up\d+/conv|loc\d+/conv_[ab]|seg\d+)"
DECODER_NORM = r"decoder/(up\d+/norm|loc\d+/norm_[ab])"
HEAD = r"head"

CONV_LEAVES = "(kernel|bias)"    # a 3D convolution's (msjax/models/layers.Conv3D) and the head's
NORM_LEAVES = "(scale|bias)"     # an affine instance norm's


def conv(family: str) -> str:
  """The regex of every leaf of a conv (or dense) family."""
  return rf"({family})/{CONV_LEAVES}"


def norm(family: str) -> str:
  """The regex of every leaf of a norm family."""
  return rf"({family})/{NORM_LEAVES}"

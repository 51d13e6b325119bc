"""msjax: MS lesion segmentation in 3D MRI with self-supervised position pretraining, in JAX/Flax."""
__version__ = "0.1.0"

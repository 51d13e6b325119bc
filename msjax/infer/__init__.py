"""Inference: patch samplers, predict, BIDS-derivative outputs and the model bundle."""

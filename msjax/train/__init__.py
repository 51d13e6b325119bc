"""Training: losses, optimiser and freezing, transfer, the jitted step, the loop and its state."""

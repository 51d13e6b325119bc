"""Compute kernels and the machine: convolution formulations, oneDNN, fused norm, CPU ISA."""

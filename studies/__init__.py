"""The lab's studies: run from the repository root (python studies/<name>.py), not installed."""

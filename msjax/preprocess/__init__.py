"""Preprocessing (optional extra `preprocess`): raw hospital exams -> the paper's 128³ MNI grid,
and predictions back to each exam's native FLAIR space."""

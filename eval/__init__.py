"""Evaluation: metrics (pure functions), synthetic scenes with ground truth, dataset runners, the demo."""

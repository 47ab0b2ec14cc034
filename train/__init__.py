"""Learned models on top of the physics: residual gradient boosting, intervals, tuning, grouped evaluation."""

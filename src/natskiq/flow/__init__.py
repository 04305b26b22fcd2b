"""Workflows: chains of jobs and batches with callbacks, built on enqueue and results."""

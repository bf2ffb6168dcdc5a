"""Evaluation and benchmark scripts."""

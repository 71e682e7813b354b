"""Metrics, feature extractors and evaluators."""

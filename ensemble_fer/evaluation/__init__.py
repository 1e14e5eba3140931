"""Evaluation of labelled data, model comparison, metrics and their figures."""

"""Thin command-line stages over the ensemble_fer library (`python -m pipelines.<stage>`)."""

"""Thin command-line stages over the ensemble_fer library (`python -m pipelines.<stage>`)."""

import os

# TensorFlow's C++ start-up chatter (oneDNN notes, "no CUDA driver") buries the stages' own
# output; errors still show. Set TF_CPP_MIN_LOG_LEVEL=0 to see everything.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

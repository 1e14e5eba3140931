"""Thin command-line stages over the ensemble_fer library (`python -m pipelines.<stage>`)."""

from ensemble_fer import tf_startup

# Runs before any stage module: TensorFlow's C++ start-up chatter (oneDNN notes, "no CUDA
# driver") would bury the stages' own output; other lines it writes still show.
tf_startup.quiet_tensorflow_import()

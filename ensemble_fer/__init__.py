"""ensemble_fer: facial expression recognition with the EmoNet method.

dlib landmarks + sliding-window HOG ("BOVW") features, two-input Keras variants and a
weighted ensemble fitted by differential evolution. Heavy modules (TensorFlow, dlib) are
imported on first use, never at ``import ensemble_fer``.
"""

import os as _os

from ensemble_fer import tf_startup as _tf_startup

# The release whose default model ships with this code (models/release/README.md); what came
# after it is under "Unreleased" in CHANGELOG.md. pyproject.toml reads it from here.
__version__ = "0.11.0"

# The library is as quiet as the CLI: TensorFlow's C++ start-up lines (cuInit on a CPU
# machine, oneDNN) are held back at its first import, wherever that happens; OpenCV's FFmpeg
# backend keeps its own errors ("moov atom not found") to itself, since an unreadable video is
# reported by name here. Both only set what the user has not set, and import nothing heavy.
_tf_startup.quiet_tensorflow_import()
_os.environ.setdefault("OPENCV_FFMPEG_LOGLEVEL", "-8")     # AV_LOG_QUIET; read when cv2 loads

__all__ = ["EmotionRecognizer", "FaceResult", "__version__"]


def __getattr__(name):
    # Lazy: `import ensemble_fer` must stay cheap (no TensorFlow start-up).
    if name in ("EmotionRecognizer", "FaceResult"):
        from ensemble_fer.inference import recognizer
        return getattr(recognizer, name)
    raise AttributeError(f"module 'ensemble_fer' has no attribute {name!r}")

"""ensemble_fer: facial expression recognition with the EmoNet method.

dlib landmarks + sliding-window HOG ("BOVW") features, two-input Keras variants and a
weighted ensemble fitted by differential evolution. Heavy modules (TensorFlow, dlib) are
imported on first use, never at ``import ensemble_fer``.
"""

__version__ = "0.1.0"

__all__ = ["EmotionRecognizer", "FaceResult", "__version__"]


def __getattr__(name):
    # Lazy: `import ensemble_fer` must stay cheap (no TensorFlow start-up).
    if name in ("EmotionRecognizer", "FaceResult"):
        from ensemble_fer.inference import recognizer
        return getattr(recognizer, name)
    raise AttributeError(f"module 'ensemble_fer' has no attribute {name!r}")

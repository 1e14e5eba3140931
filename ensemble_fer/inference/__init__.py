"""Prediction: the predictor over variants and ensembles, the public recognizer, Grad-CAM, annotated pictures, video, export."""

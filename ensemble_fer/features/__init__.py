"""Stage 1: faces, landmarks, HOG and the BOVW vector, and the feature store they are saved in."""

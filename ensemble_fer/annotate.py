"""Drawing results: face boxes with their emotion, Grad-CAM heat maps over face crops.

Pure OpenCV on uint8 arrays in RGB order (as :func:`ensemble_fer.datasets.read_image_file`
returns them); nothing here reads or writes files except :func:`write_image`, which writes
atomically through :mod:`ensemble_fer.artifacts`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

BOX_COLOUR = (0, 200, 0)         # RGB
NO_FACE_COLOUR = (220, 40, 40)   # RGB


def to_rgb(image: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) RGB from grayscale, RGB or RGBA (alpha dropped)."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"image must be uint8; got {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim == 2:
        return np.repeat(image[..., None], 3, axis=2)
    if image.ndim == 3 and image.shape[2] in (3, 4):
        return np.ascontiguousarray(image[..., :3])
    raise ValueError(f"image must be (H, W), (H, W, 3) or (H, W, 4); got shape {image.shape}")


def draw_faces(image: np.ndarray, faces) -> np.ndarray:
    """A copy of ``image`` (RGB) with each face's box and ``"<emotion> <score>"`` label drawn.

    ``faces`` is a list of :class:`ensemble_fer.recognizer.FaceResult` (anything with ``box``,
    ``emotion`` and ``scores``). With no face, ``no face`` is written in the top-left corner.
    """
    import cv2

    out = to_rgb(image).copy()
    height, width = out.shape[:2]
    scale = max(0.35, min(width, height) / 900)       # readable on small and large photos
    thickness = max(1, round(scale * 2))
    font = cv2.FONT_HERSHEY_SIMPLEX
    if not faces:
        _label(out, "no face", (2, 2), NO_FACE_COLOUR, font, scale, thickness)
        return out
    for face in faces:
        left, top, right, bottom = (int(v) for v in face.box)
        cv2.rectangle(out, (left, top), (right, bottom), BOX_COLOUR, thickness)
        text = f"{face.emotion} {face.scores[face.emotion]:.2f}"
        (_, text_h), baseline = cv2.getTextSize(text, font, scale, thickness)
        label_h = text_h + baseline + 4
        # above the box when there is room, else inside its top edge
        y = top - label_h if top - label_h >= 0 else top
        _label(out, text, (left, y), BOX_COLOUR, font, scale, thickness)
    return out


def _label(image, text, origin, colour, font, scale, thickness) -> None:
    import cv2

    (text_w, text_h), baseline = cv2.getTextSize(text, font, scale, thickness)
    x, y = origin
    cv2.rectangle(image, (x, y), (x + text_w + 4, y + text_h + baseline + 4), colour, cv2.FILLED)
    cv2.putText(image, text, (x + 2, y + text_h + 2), font, scale, (255, 255, 255), thickness, cv2.LINE_AA)


def heatmap_overlay(crop: np.ndarray, heatmap: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """The face crop (uint8 gray or RGB) blended with a jet-coloured heat map in [0, 1].

    The result has the crop's size, uint8 RGB; the map must have the crop's height and width.
    """
    import cv2

    crop = to_rgb(crop)
    heatmap = np.asarray(heatmap, dtype=np.float32)
    if heatmap.shape != crop.shape[:2]:
        raise ValueError(f"heatmap shape {heatmap.shape} differs from the crop's {crop.shape[:2]}")
    levels = np.clip(np.rint(heatmap * 255), 0, 255).astype(np.uint8)
    colours = cv2.cvtColor(cv2.applyColorMap(levels, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    blended = (1.0 - alpha) * crop.astype(np.float32) + alpha * colours.astype(np.float32)
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def write_image(path, image: np.ndarray) -> Path:
    """Write an RGB (or gray) uint8 image atomically; the format follows the suffix (cv2)."""
    import cv2

    from .artifacts import atomic_path

    path = Path(path)
    image = np.asarray(image)
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
    suffix = path.suffix or ".png"
    with atomic_path(path) as tmp:
        ok, encoded = cv2.imencode(suffix, bgr)
        if not ok:
            raise ValueError(f"{path}: cannot encode an image as {suffix}")
        tmp.write_bytes(encoded.tobytes())
    return path

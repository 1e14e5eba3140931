"""Drawing results: face boxes with their emotion, Grad-CAM heat maps over face crops.

Pure OpenCV on uint8 arrays in RGB order (as :func:`ensemble_fer.features.image_io.read_image_file`
returns them); nothing here reads or writes files except :func:`write_image`, which writes
atomically through :mod:`ensemble_fer.artifacts`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ensemble_fer.errors import InputError

BOX_COLOUR = (0, 200, 0)         # RGB; an emotion without its own colour
NO_FACE_COLOUR = (220, 40, 40)   # RGB
EMOTION_COLOURS = {              # RGB: one hue per FER2013 emotion, told apart at a glance
    "angry": (215, 38, 38), "disgust": (120, 160, 20), "fear": (140, 60, 200), "happy": (250, 200, 0),
    "sad": (30, 110, 230), "surprise": (255, 120, 0), "neutral": (128, 128, 128),
}
"""Box and label colour of each emotion; :func:`draw_faces` adds a legend of those it drew."""


def emotion_colour(emotion: str) -> tuple[int, int, int]:
    return EMOTION_COLOURS.get(emotion, BOX_COLOUR)


def to_rgb(image: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) RGB from grayscale, RGB or RGBA (alpha dropped)."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise InputError(f"image must be uint8; got {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim == 2:
        return np.repeat(image[..., None], 3, axis=2)
    if image.ndim == 3 and image.shape[2] in (3, 4):
        return np.ascontiguousarray(image[..., :3])
    raise InputError(f"image must be (H, W), (H, W, 3) or (H, W, 4); got shape {image.shape}")


def draw_faces(image: np.ndarray, faces, labels=None) -> np.ndarray:
    """A copy of ``image`` (RGB) with each face's box and its top emotion and score drawn.

    ``faces`` is a list of :class:`ensemble_fer.inference.recognizer.FaceResult` (anything with ``box``,
    ``emotion`` and ``scores``); ``labels`` optionally replaces the default
    ``"<emotion> <score>"`` texts, one per face (video annotation prefixes the track id).
    Labels stay inside the image and do not cover each other (see :func:`place_labels`).
    Boxes and labels take their emotion's colour (:data:`EMOTION_COLOURS`), and a legend of
    the emotions drawn goes in the corner that covers the fewest faces and labels.
    With no face, ``no face`` is written in the top-left corner.
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
    if labels is None:
        labels = ["{} {:.2f}".format(*_top(face)) for face in faces]
    if len(labels) != len(faces):
        raise InputError(f"labels: {len(labels)} texts for {len(faces)} faces")
    boxes = [tuple(int(v) for v in face.box) for face in faces]
    colours = [emotion_colour(_top(face)[0]) for face in faces]
    sizes = [_label_size(text, font, scale, thickness) for text in labels]
    for (left, top, right, bottom), colour in zip(boxes, colours):
        cv2.rectangle(out, (left, top), (right, bottom), colour, thickness)
    origins = place_labels(boxes, sizes, (height, width))
    for text, origin, colour in zip(labels, origins, colours):
        _label(out, text, origin, colour, font, scale, thickness)
    taken = boxes + [(x, y, x + w, y + h) for (x, y), (w, h) in zip(origins, sizes)]
    _legend(out, sorted({_top(face)[0] for face in faces}, key=_emotion_order), taken, font, scale * 0.8,
            max(1, thickness - 1))
    return out


def _emotion_order(emotion: str) -> int:
    names = list(EMOTION_COLOURS)
    return names.index(emotion) if emotion in names else len(names)


def _legend(image, emotions, taken, font, scale, thickness) -> None:
    """A key of the colours drawn, one row per emotion, in the corner of the image that covers
    the fewest faces and labels (``taken``: their rectangles)."""
    if not emotions:
        return
    height, width = image.shape[:2]
    rows = [_label_size(name, font, scale, thickness) for name in emotions]
    w, h = max(r[0] for r in rows), sum(r[1] for r in rows)
    corners = [(0, 0), (width - w, 0), (0, height - h), (width - w, height - h)]
    x, y = min(((max(0, cx), max(0, cy)) for cx, cy in corners),
               key=lambda c: sum(_overlap((c[0], c[1], c[0] + w, c[1] + h), r) for r in taken))
    for name, (_, row_h) in zip(emotions, rows):
        _label(image, name, (x, y), emotion_colour(name), font, scale, thickness)
        y += row_h


def _top(face) -> tuple[str, float]:
    top = getattr(face, "top_emotion", None)
    return top if top is not None else (face.emotion, face.scores[face.emotion])


def place_labels(boxes, sizes, shape) -> list[tuple[int, int]]:
    """Top-left corners of one label per face box: inside the image, not over each other.

    ``boxes`` are ``(left, top, right, bottom)``, ``sizes`` the labels' ``(width, height)``,
    ``shape`` the image's ``(height, width)``. Each label tries, in order: above its box,
    below it, inside its top edge, inside its bottom edge (left-aligned with the box, moved
    sideways to stay in the image); the first spot that covers no label placed before it and
    no other face wins, else the one covering the least. Larger faces are placed first, so
    in a crowd the smaller faces' labels give way.
    """
    height, width = shape
    placed: list[tuple[int, int, int, int]] = []
    origins: list[tuple[int, int] | None] = [None] * len(boxes)
    order = sorted(range(len(boxes)), key=lambda i: -(boxes[i][2] - boxes[i][0]) * (boxes[i][3] - boxes[i][1]))
    for i in order:
        left, top, right, bottom = boxes[i]
        w, h = sizes[i]
        candidates = [(left, top - h), (left, bottom + 1), (left, top), (left, bottom - h),
                      (right - w, top - h), (right - w, bottom + 1)]
        best, best_cost = None, None
        for x, y in candidates:
            x = min(max(0, x), max(0, width - w))
            y = min(max(0, y), max(0, height - h))
            rect = (x, y, x + w, y + h)
            cost = (sum(_overlap(rect, other) for other in placed) * 4
                    + sum(_overlap(rect, boxes[j]) for j in range(len(boxes)) if j != i))
            if best_cost is None or cost < best_cost:
                best, best_cost = (x, y), cost
            if cost == 0:
                break
        origins[i] = best
        placed.append((best[0], best[1], best[0] + w, best[1] + h))
    return origins


def _overlap(a, b) -> int:
    return max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))


def _label_size(text, font, scale, thickness) -> tuple[int, int]:
    import cv2

    (text_w, text_h), baseline = cv2.getTextSize(text, font, scale, thickness)
    return text_w + 4, text_h + baseline + 4


def _label(image, text, origin, colour, font, scale, thickness) -> None:
    import cv2

    (text_w, text_h), baseline = cv2.getTextSize(text, font, scale, thickness)
    x, y = origin
    cv2.rectangle(image, (x, y), (x + text_w + 4, y + text_h + baseline + 4), colour, cv2.FILLED)
    # dark text on light fills (happy's yellow), white on the rest
    ink = (0, 0, 0) if 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2] > 150 else (255, 255, 255)
    cv2.putText(image, text, (x + 2, y + text_h + 2), font, scale, ink, thickness, cv2.LINE_AA)


def heatmap_overlay(crop: np.ndarray, heatmap: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """The face crop (uint8 gray or RGB) blended with a jet-coloured heat map in [0, 1].

    The result has the crop's size, uint8 RGB; the map must have the crop's height and width.
    """
    import cv2

    crop = to_rgb(crop)
    heatmap = np.asarray(heatmap, dtype=np.float32)
    if heatmap.shape != crop.shape[:2]:
        raise InputError(f"heatmap shape {heatmap.shape} differs from the crop's {crop.shape[:2]}")
    levels = np.clip(np.rint(heatmap * 255), 0, 255).astype(np.uint8)
    colours = cv2.cvtColor(cv2.applyColorMap(levels, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)
    blended = (1.0 - alpha) * crop.astype(np.float32) + alpha * colours.astype(np.float32)
    return np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def gradcam_figure(crop: np.ndarray, heatmap: np.ndarray, caption: str, size: int = 192) -> np.ndarray:
    """A picture to look at: the face crop and its Grad-CAM overlay side by side, each
    ``size`` pixels square (the 48x48 crop upscaled smoothly), with ``caption`` below.

    uint8 RGB, shape ``(size + caption bar, 2 * size, 3)``.
    """
    import cv2

    crop = to_rgb(crop)
    heatmap = np.asarray(heatmap, dtype=np.float32)
    if heatmap.shape != crop.shape[:2]:
        raise InputError(f"heatmap shape {heatmap.shape} differs from the crop's {crop.shape[:2]}")
    face = cv2.resize(crop, (size, size), interpolation=cv2.INTER_CUBIC)
    smooth = np.clip(cv2.resize(heatmap, (size, size), interpolation=cv2.INTER_LINEAR), 0.0, 1.0)
    panels = np.concatenate([face, heatmap_overlay(face, smooth)], axis=1)
    font, scale, thickness = cv2.FONT_HERSHEY_SIMPLEX, size / 400, max(1, round(size / 200))
    # shrink the caption until it fits the figure's width
    while scale > 0.3 and cv2.getTextSize(caption, font, scale, thickness)[0][0] > panels.shape[1] - 8:
        scale *= 0.9
    (_, text_h), baseline = cv2.getTextSize(caption, font, scale, thickness)
    bar = np.full((text_h + baseline + 12, panels.shape[1], 3), 255, np.uint8)
    cv2.putText(bar, caption, (4, text_h + 6), font, scale, (0, 0, 0), thickness, cv2.LINE_AA)
    return np.concatenate([panels, bar], axis=0)


def write_image(path, image: np.ndarray) -> Path:
    """Write an RGB (or gray) uint8 image atomically; the format follows the suffix (cv2)."""
    import cv2

    from ensemble_fer.artifacts import atomic_path

    path = Path(path)
    image = np.asarray(image)
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR) if image.ndim == 3 else image
    suffix = path.suffix or ".png"
    # asked first: for a suffix it has no encoder for, imencode raises a cv2.error, not False
    if not cv2.haveImageWriter(f"image{suffix}"):
        raise InputError(f"{path}: cannot encode an image as {suffix}")
    with atomic_path(path) as tmp:
        ok, encoded = cv2.imencode(suffix, bgr)
        if not ok:
            raise RuntimeError(f"{path}: OpenCV failed to encode a {image.dtype} {image.shape} image as {suffix}")
        tmp.write_bytes(encoded.tobytes())
    return path

"""Sliding-window HOG of a 48x48 face crop (the EmoNet HOG, 2592 values).

The original EmoNet feature code slides a 24x24 window over the image with a step of
6 pixels and, for every window, calls ``skimage.feature.hog`` with 8 orientations,
8x8-pixel cells and 1x1-cell blocks (L2-Hys normalised)::

    for y in range(0, 48, 6):
        for x in range(0, 48, 6):
            window = image[y:y+24, x:x+24]        # clipped at the image border
            features.extend(hog(window, orientations=8, pixels_per_cell=(8, 8),
                                cells_per_block=(1, 1)))

Windows that reach past the border are clipped, so they hold fewer cells: along each
axis the eight windows hold 3, 3, 3, 3, 3, 2, 1 and 0 cells (the last, 6 pixels wide,
holds no full cell; scikit-image raises ``ValueError`` for it and it contributes
nothing). That makes 18 x 18 cells x 8 orientations = 2592 values.

:func:`sliding_hog_reference` is that loop, kept as the ground truth.
:func:`sliding_hog` computes the same numbers for a whole batch with numpy. It relies
on three facts about the reference:

* Every cell appears in exactly one window (the 18 cell row-starts, and column-starts,
  are all distinct), and with 1x1 blocks each cell is normalised on its own. So the
  descriptor is 324 independent cell histograms, put in the reference's order at the
  end.
* scikit-image takes the gradient *of the window*: central differences inside it, and
  zero for the row gradient on the window's first and last rows (and for the column
  gradient on its first and last columns). A pixel's gradient therefore is the
  image's central difference, except on the one row (and column) of a cell where its
  window's border cuts it, where one component is zero. With one component zero the
  orientation bin is a constant (the angle is 0 or 90 degrees), so only the image's
  central-difference gradient needs an ``arctan2``; the cut rows and columns are
  added to the cell sums separately.
* A pixel votes its full gradient magnitude into the one bin ``i`` with
  ``22.5 * i <= angle < 22.5 * (i + 1)`` (angle in degrees, taken modulo 180), and
  a cell's value is the sum of its votes divided by the 64 pixels of the cell.
"""

from __future__ import annotations

import numpy as np
import skimage.feature

__all__ = [
    "WINDOW",
    "STEP",
    "ORIENTATIONS",
    "CELL",
    "IMAGE_SIZE",
    "HOG_SIZE",
    "sliding_hog",
    "sliding_hog_reference",
]

WINDOW = 24
"""Side of the sliding window, in pixels."""
STEP = 6
"""Step between window origins, in pixels."""
ORIENTATIONS = 8
"""Orientation bins over 0-180 degrees (unsigned gradients)."""
CELL = 8
"""Side of a HOG cell, in pixels (one cell per block)."""
IMAGE_SIZE = 48
"""Side of the (square) face crop the descriptor is defined for."""

_EPS = 1e-5  # scikit-image's block-normalisation epsilon
_CLIP = 0.2  # L2-Hys clipping threshold

# Window origins along one axis, and for each window the start of each full cell in it.
_ORIGINS = tuple(range(0, IMAGE_SIZE, STEP))
_N_CELLS = tuple(min(WINDOW, IMAGE_SIZE - o) // CELL for o in _ORIGINS)
_CELL_STARTS = np.array([o + CELL * k for o, n in zip(_ORIGINS, _N_CELLS) for k in range(n)])
_N_AXIS_CELLS = len(_CELL_STARTS)  # 18

HOG_SIZE = _N_AXIS_CELLS * _N_AXIS_CELLS * ORIENTATIONS
"""Length of the descriptor: 18 x 18 cells x 8 orientations = 2592."""
assert HOG_SIZE == 2592  # the published feature size: guards the geometry above


def _window_border_offsets() -> np.ndarray:
    """For each of the 18 cells along an axis, where the window's border cuts it.

    Returns the pixel index (image coordinates) at which the gradient along this axis
    is zero because it is the first or last pixel of the cell's window, or -1 when the
    cell has no such pixel. A cell holds at most one: the first cell of a window
    holds the window's first pixel; the window's last pixel lies in a cell only for
    full 24-pixel windows (in their third cell); clipped windows end in pixels that no
    cell covers.
    """
    zero_at = []
    for origin, n in zip(_ORIGINS, _N_CELLS):
        last = min(origin + WINDOW, IMAGE_SIZE) - 1
        for k in range(n):
            start = origin + CELL * k
            if k == 0:
                zero_at.append(origin)
            elif start <= last < start + CELL:
                zero_at.append(last)
            else:
                zero_at.append(-1)
    return np.array(zero_at)


_ZERO_AT = _window_border_offsets()


def _output_order() -> tuple[np.ndarray, np.ndarray]:
    """Row-cell and column-cell index of each of the 324 cells, in the reference order.

    The reference emits windows in y-then-x order and, within a window, cells
    row-major (orientations innermost, handled by the caller).
    """
    first = np.cumsum((0,) + _N_CELLS[:-1])  # index of each window's first cell
    rows, cols = [], []
    for wy, ny in enumerate(_N_CELLS):
        for wx, nx in enumerate(_N_CELLS):
            for a in range(ny):
                for b in range(nx):
                    rows.append(first[wy] + a)
                    cols.append(first[wx] + b)
    return np.array(rows), np.array(cols)


_ORDER_ROWS, _ORDER_COLS = _output_order()


def _orientation(g_row, g_col):
    """Unsigned gradient angle in degrees, exactly as scikit-image computes it.

    scikit-image takes ``rad2deg(arctan2(g_row, g_col)) % 180``. ``np.mod`` is slow, and
    for angles in [-180, 180] it equals adding 180 to negative angles (the same
    rounded sum) and mapping 180 itself to 0, which is what is done here.
    """
    degrees = np.arctan2(g_row, g_col)
    degrees *= 180.0 / np.pi  # what np.rad2deg computes, in place
    degrees += 180.0 * (degrees < 0)  # adding 0.0 elsewhere changes nothing
    degrees -= 180.0 * (degrees >= 180)
    return degrees


_BIN_WIDTH = 180.0 / ORIENTATIONS  # 22.5, exact in binary floating point


def _bin(angle):
    """Orientation bin of each angle, with scikit-image's exact comparisons.

    Bin ``i`` holds ``22.5 * i <= angle < 22.5 * (i + 1)``. The quotient is only a
    first guess (its rounding can cross a bin edge), so the guess is checked against
    the edges themselves, which are exact. An angle that rounded to 180.0 gets "bin 8"
    and, as in scikit-image, votes in no bin.
    """
    guess = np.multiply(angle, 1.0 / _BIN_WIDTH)
    np.floor(guess, out=guess)
    edge = np.multiply(guess, _BIN_WIDTH)  # exact: an integer times 22.5
    guess -= angle < edge
    np.add(guess, 1.0, out=edge)
    edge *= _BIN_WIDTH
    guess += angle >= edge
    return guess.astype(np.int8)


# Bins of the gradients with one zero component, computed with the same formula rather
# than assumed (rounding of rad2deg(pi / 2) decides between bins 3 and 4).
_SIGNS = np.array([1.0, -1.0])
_BIN_ROW_ZERO = tuple(_bin(_orientation(np.zeros(2), _SIGNS)).tolist())  # for g_col > 0, < 0
_BIN_COL_ZERO = tuple(_bin(_orientation(_SIGNS, np.zeros(2))).tolist())  # for g_row > 0, < 0


def sliding_hog_reference(image) -> np.ndarray:
    """The sliding-window HOG of one 48x48 image, window by window with scikit-image.

    This is the original EmoNet feature code: slow (64 calls to
    ``skimage.feature.hog``) but the definition that :func:`sliding_hog` reproduces.
    Windows without a full 8x8 cell (the 6-pixel strip at the right and bottom
    border) contribute nothing; scikit-image would raise ``ValueError`` for them.

    Parameters
    ----------
    image : array-like of shape (48, 48)
        A grayscale face crop, integer or float.

    Returns
    -------
    ndarray of shape (2592,), float64 (float32 for float32 input, as scikit-image)
    """
    image = _check_single(image)
    features = []
    for y in _ORIGINS:
        for x in _ORIGINS:
            window = image[y : y + WINDOW, x : x + WINDOW]
            if min(window.shape) < CELL:
                continue  # no full cell: scikit-image raises ValueError here
            features.append(
                skimage.feature.hog(
                    window,
                    orientations=ORIENTATIONS,
                    pixels_per_cell=(CELL, CELL),
                    cells_per_block=(1, 1),
                    block_norm="L2-Hys",
                )
            )
    return np.concatenate(features)


def _check_single(image) -> np.ndarray:
    image = np.asarray(image)
    if image.shape != (IMAGE_SIZE, IMAGE_SIZE):
        raise ValueError(
            f"image must have shape ({IMAGE_SIZE}, {IMAGE_SIZE}); got shape {image.shape}"
        )
    return image


def _cell_matrix() -> np.ndarray:
    """(18, 48) 0/1 matrix summing, for each cell along an axis, its pixels.

    The pixel where the cell's window border cuts it is left out: its gradient has a
    zero component there, and the votes it makes instead are added separately.
    """
    matrix = np.zeros((_N_AXIS_CELLS, IMAGE_SIZE))
    for cell, (start, cut) in enumerate(zip(_CELL_STARTS, _ZERO_AT)):
        matrix[cell, start : start + CELL] = 1.0
        if cut >= 0:
            matrix[cell, cut] = 0.0
    return matrix


_CELL_MATRIX = _cell_matrix()
# The 12 (of 18) cells along an axis that a window border cuts, and the pixel it cuts.
_CUT_CELLS = np.flatnonzero(_ZERO_AT >= 0)
_CUT_AT = _ZERO_AT[_CUT_CELLS]


def _one_component_votes(component, bins, k):
    """Votes into bin ``k`` of gradients whose other component is zero, or None.

    Such a gradient votes ``|component|`` into ``bins[0]`` when the component is
    positive and into ``bins[1]`` when it is negative.
    """
    if k not in bins:
        return None
    if bins[0] == bins[1]:  # always the case with IEEE arithmetic
        return np.abs(component)
    if k == bins[0]:
        return np.where(component > 0, component, 0.0)
    return np.where(component < 0, -component, 0.0)


def _hog_chunk(images: np.ndarray) -> np.ndarray:
    """Descriptor of a (n, 48, 48) chunk of float32 or float64 images.

    The cell sums are matrix products with the 0/1 cell matrix (along the rows, then
    along the columns), one orientation bin at a time. numpy runs a stack of small
    matrix products single-threaded, one per image, which keeps BLAS from spinning up
    threads that compete with a caller's own parallelism.
    """
    n = len(images)
    cells = _N_AXIS_CELLS

    # Central-difference gradient of the whole image, in the image's float type like
    # scikit-image (it matters for float32 input), then float64 for the histogram.
    # The image's outermost rows/columns are the border of every window that has them,
    # so the gradient across them is zero.
    g_row = np.zeros(images.shape)
    np.subtract(images[:, 2:], images[:, :-2], out=g_row[:, 1:-1], dtype=images.dtype)
    g_col = np.zeros(images.shape)
    np.subtract(images[:, :, 2:], images[:, :, :-2], out=g_col[:, :, 1:-1], dtype=images.dtype)

    # sqrt(a^2 + b^2) instead of np.hypot (several times slower): both round to within
    # an ulp of float64, far below the float32 output precision.
    magnitude = g_row * g_row
    magnitude += g_col * g_col
    np.sqrt(magnitude, out=magnitude)
    bins = _bin(_orientation(g_row, g_col))

    # Gradients with a zero component, on the pixels where a window border cuts a cell.
    row_zero = g_col[:, _CUT_AT]  # cut rows, where g_row = 0: (n, 12, 48)
    col_zero = g_row[:, :, _CUT_AT]  # cut columns, where g_col = 0: (n, 48, 12)

    totals = np.empty((ORIENTATIONS, n, cells, cells))
    votes = np.empty(images.shape)
    in_bin = np.empty(images.shape, dtype=bool)
    for k in range(ORIENTATIONS):
        # The pixels' votes into bin k ("bin 8", an angle of 180.0, votes nowhere).
        np.equal(bins, k, out=in_bin)
        np.multiply(magnitude, in_bin, out=votes)

        # Row pass: (n, 18, 48) sums over each row-cell's rows, except the cut row,
        # whose votes (made with a zero row gradient) are added back.
        rows = np.matmul(_CELL_MATRIX, votes)
        extra = _one_component_votes(row_zero, _BIN_ROW_ZERO, k)
        if extra is not None:
            rows[:, _CUT_CELLS] += extra

        # Column pass: (n, 18, 18), the cut column left out likewise; its votes (made
        # with a zero column gradient) are added back, summed over the cell's rows
        # except the cut row, where both components are zero and nothing is voted.
        np.matmul(rows, _CELL_MATRIX.T, out=totals[k])
        extra = _one_component_votes(col_zero, _BIN_COL_ZERO, k)
        if extra is not None:
            totals[k][:, :, _CUT_CELLS] += np.matmul(_CELL_MATRIX, extra)

    # scikit-image accumulates each cell in single precision and divides by its area.
    hist = (totals.astype(np.float32) / np.float32(CELL * CELL)).astype(np.float64)

    # L2-Hys normalisation of each cell (1x1-cell blocks), as scikit-image.
    hist /= np.sqrt(np.sum(hist * hist, axis=0) + _EPS**2)
    np.minimum(hist, _CLIP, out=hist)
    hist /= np.sqrt(np.sum(hist * hist, axis=0) + _EPS**2)

    # Reference order: per image, (324 cells, 8 bins).
    return np.moveaxis(hist[:, :, _ORDER_ROWS, _ORDER_COLS], 0, -1).reshape(n, HOG_SIZE)


def sliding_hog(images, *, chunk_size: int = 8) -> np.ndarray:
    """Sliding-window HOG of one 48x48 image or a batch, vectorised.

    Equal (to about 2e-7, float32 rounding) to :func:`sliding_hog_reference` applied
    image by image, and 60 to 100 times faster on a batch (25 to 50 times for one
    image per call; see ``benchmarks/RESULTS.md``).

    Parameters
    ----------
    images : array-like of shape (48, 48) or (N, 48, 48)
        Grayscale face crops, uint8 or float (values on any scale; like scikit-image,
        float32 input is differentiated in float32, everything else in float64).
    chunk_size : int, default=8
        Images processed at once. Small on purpose: the working arrays of 8 images
        (about 150 kB each) are reused by the memory allocator from chunk to chunk,
        while larger ones are mapped afresh each time and the page faults cost more
        than the per-chunk overhead saves.

    Returns
    -------
    ndarray of shape (2592,) or (N, 2592), float32
        Per window (y-then-x order), per cell (row-major), the 8 orientation values.
    """
    images = np.asarray(images)
    single = images.ndim == 2
    if not (images.ndim in (2, 3) and images.shape[-2:] == (IMAGE_SIZE, IMAGE_SIZE)):
        raise ValueError(
            f"images must have shape ({IMAGE_SIZE}, {IMAGE_SIZE}) or "
            f"(N, {IMAGE_SIZE}, {IMAGE_SIZE}); got shape {images.shape}"
        )
    if images.dtype.kind not in "biuf":
        raise ValueError(
            f"images must hold integers or floats (e.g. uint8); got dtype {images.dtype}"
        )
    if images.dtype.kind == "f" and not np.isfinite(images).all():
        raise ValueError("images must be finite; got NaN or infinite values")
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer; got {chunk_size!r}")

    batch = images[None] if single else images
    # Same working precision as scikit-image: float32 stays float32 (float16 too),
    # everything else (uint8, int, float64) becomes float64.
    work = np.float32 if batch.dtype in (np.float16, np.float32) else np.float64
    out = np.empty((len(batch), HOG_SIZE), dtype=np.float32)
    for begin in range(0, len(batch), chunk_size):
        chunk = batch[begin : begin + chunk_size].astype(work)
        out[begin : begin + chunk_size] = _hog_chunk(chunk)
    return out[0] if single else out

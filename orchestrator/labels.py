"""Point labels for a scatter plot that never print over each other or over a point's marker.

The report's Pareto plot often has a few dozen configurations within 0.01 of each other, and a fixed
``xytext=(4, 4)`` offset turned their labels into one smear. `place_labels` puts the labels one at a time
(in order of the points' x, then y) at the nearest free spot around each point: candidate spots lie on rings
of growing radius around the point, each label's box is measured with the renderer, and the first candidate
that meets no label already placed, no point's marker and no text already in the axes, and lies inside the
axes, wins. A label that had to move away from its point gets a thin leader line; spots whose leader would
cross another label (or whose box a leader crosses) are preferred. If the axes truly have no room left, the
label goes into a column to the right of the axes (which may run past the figure's edge). Every label is
placed once and the rings stop at the axes' diagonal, so the work is bounded whatever the points.

The geometry is worked out in points (display pixels times 72 / dpi) and stored as offsets in points from each
point, so it survives `savefig` at another dpi, as long as the points themselves stay where they are. Text is
the exception: hinting makes a label a few percent wider at one dpi than at another, so each label's box is
measured at the figure's dpi and at the one it will be saved at (the `dpi` argument) and the union is used.
Hence the caller's order:

1. draw the data and set the axis limits (`place_labels` freezes them, so a later ``plot`` cannot autoscale
   the points away from their labels);
2. call ``figure.tight_layout()``, after the title and axis labels are set (layout moves and resizes the axes,
   hence the points' spacing, but not the labels' offsets). A layout engine (``layout="constrained"``) is run
   once inside `place_labels` and then switched off, for the same reason;
3. ``place_labels(axis, points, texts, dpi=<savefig's dpi>)``;
4. add a ``loc="best"`` legend now if any: it then avoids the labels (a legend that already exists is an
   obstacle the labels avoid, which only holds if its location is fixed); then ``figure.savefig(..., dpi=...)``.
   Do not call ``tight_layout`` again.

It needs a canvas that can hand out a renderer: Agg's, the report's backend.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.layout_engine import PlaceHolderLayoutEngine
from matplotlib.text import Annotation

# Gap kept around every label; it also absorbs the pixel or so by which a text's extent changes between dpis.
_PAD_PT = 1.5
# Ring spacing: fine near the point, where labels belong, coarser far out, where only the last ones go.
_MIN_STEP_PT = 1.5
_STEP_FRACTION = 0.08
# Spacing of the candidates along a ring.
_ARC_STEP_PT = 5.0
_LEADER: dict[str, Any] = {"arrowstyle": "-", "lw": 0.5, "color": "0.5"}
# The direction a label goes first: up and to the right, as the old fixed offset did.
_PREFERRED_ANGLE = math.pi / 4

_Box = tuple[float, float, float, float]  # x0, y0, x1, y1


def place_labels(
    axis: Axes,
    points: Sequence[tuple[float, float]],
    texts: Sequence[str],
    *,
    fontsize: float = 7,
    marker_size: float = 8.0,
    dpi: float | None = None,
) -> list[Annotation]:
    """Annotate each point with its text so that no two labels overlap and no label covers a point marker.

    `marker_size` is the side, in points, of the square around each point that no label may cover (8 covers
    ``scatter(s=40)``; pass about 13 for ``s=160``). `dpi` is the one ``savefig`` will write at, if not the
    figure's: the layout holds at both. Call after ``figure.tight_layout()`` and before ``savefig`` (see the
    module docstring). Returns the annotations in the order of `points`; a point whose coordinates are not
    finite, or that lies outside the axes' view, gets none (matplotlib would not draw it).
    """
    if len(points) != len(texts):
        raise ValueError(f"{len(points)} points but {len(texts)} texts")
    figure = axis.get_figure(root=True)
    if figure is None:
        raise ValueError("the axes belong to no figure")
    _renderer(figure)  # fail before changing anything if text cannot be measured

    engine = figure.get_layout_engine()
    if engine is not None and not isinstance(engine, PlaceHolderLayoutEngine):
        # The engine would rerun at savefig, now counting the labels, and move the axes under them.
        figure.draw_without_rendering()
        figure.set_layout_engine("none")
    # Autoscaling after placement would move the points; the labels' offsets would not follow.
    axis.set_xlim(axis.get_xlim())
    axis.set_ylim(axis.get_ylim())
    axis.apply_aspect()

    # All geometry is in points from the figure's lower left: unlike pixels, these do not change with the dpi.
    to_pt = 72 / figure.dpi
    view, whole = axis.bbox, figure.bbox
    bounds = (
        max(view.x0, whole.x0) * to_pt,
        max(view.y0, whole.y0) * to_pt,
        min(view.x1, whole.x1) * to_pt,
        min(view.y1, whole.y1) * to_pt,
    )
    order: list[tuple[int, float, float]] = []
    for i, (x, y) in enumerate(points):
        if not (math.isfinite(x) and math.isfinite(y)):
            continue
        px, py = (float(v) * to_pt for v in axis.transData.transform((x, y)))
        if bounds[0] <= px <= bounds[2] and bounds[1] <= py <= bounds[3]:
            order.append((i, px, py))
    order.sort(key=lambda item: (points[item[0]][0], points[item[0]][1], item[0]))

    annotations = {
        i: axis.annotate(
            texts[i], points[i], xytext=(0, 0), textcoords="offset points", fontsize=fontsize, ha="center", va="center"
        )
        for i, _, _ in order
    }
    dpis = {figure.dpi, dpi or figure.dpi}
    if isinstance(saved := matplotlib.rcParams["savefig.dpi"], int | float):
        dpis.add(saved)  # what savefig uses when given no dpi
    extents = _extents(figure, annotations, {i: (px, py) for i, px, py in order}, dpis)

    half = marker_size / 2
    obstacles: list[_Box] = [(px - half, py - half, px + half, py + half) for _, px, py in order]
    obstacles += _existing_texts(axis, _renderer(figure), set(annotations.values()), to_pt)
    labels: list[_Box] = []
    leaders: list[_Box] = []  # segments x0, y0, x1, y1: point to label centre
    column = _Column(bounds[2] + _PAD_PT, view.y1 * to_pt, view.y0 * to_pt)

    for i, px, py in order:
        x0, y0, x1, y1 = extents[i]
        width, height = x1 - x0 + 2 * _PAD_PT, y1 - y0 + 2 * _PAD_PT
        spot = _search(
            (px, py),
            width,
            height,
            np.array(obstacles + labels).reshape(-1, 4),
            np.array(labels).reshape(-1, 4),
            np.array(leaders).reshape(-1, 4),
            bounds,
            half,
        )
        if spot is None:
            centre, leader = column.take(width, height), True
        else:
            centre, leader = spot
        # The extents are relative to the text's anchor, which sits at the point plus the offset.
        offset = (centre[0] - (x0 + x1) / 2 - px, centre[1] - (y0 + y1) / 2 - py)
        if leader:
            annotations[i].remove()
            annotations[i] = axis.annotate(
                texts[i],
                points[i],
                xytext=offset,
                textcoords="offset points",
                fontsize=fontsize,
                ha="center",
                va="center",
                arrowprops=dict(_LEADER),
            )
        else:
            annotations[i].xyann = offset
        box = (px + offset[0] + x0, py + offset[1] + y0, px + offset[0] + x1, py + offset[1] + y1)
        labels.append(box)
        if leader:
            leaders.append((px, py, (box[0] + box[2]) / 2, (box[1] + box[3]) / 2))
    return [annotations[i] for i in sorted(annotations)]


def _renderer(figure: Figure) -> Any:
    """The canvas's renderer at the figure's current dpi (Agg's canvas has one; some others do not)."""
    get_renderer = getattr(figure.canvas, "get_renderer", None)
    if get_renderer is None:
        raise TypeError(
            f"place_labels measures text with the canvas's renderer; {type(figure.canvas).__name__} has none"
        )
    return get_renderer()


def _extents(
    figure: Figure, annotations: dict[int, Annotation], anchors: dict[int, tuple[float, float]], dpis: set[float]
) -> dict[int, _Box]:
    """Each text's box in points relative to its anchor: the union of its boxes at each dpi.

    Hinting rounds glyph advances to whole pixels, so a 7 pt label is a few percent wider at one dpi than at
    another; a box that holds at every dpi drawn keeps the labels apart in the saved file and on screen.
    """
    original = figure.dpi
    result: dict[int, _Box] = {}
    try:
        for dpi in sorted(dpis):
            # As savefig does: the canvas hands out a renderer of the figure's current dpi.
            figure.dpi = dpi
            renderer = _renderer(figure)
            to_pt = 72 / dpi
            for i, annotation in annotations.items():
                extent = annotation.get_window_extent(renderer)
                ax, ay = anchors[i]
                box = (extent.x0 * to_pt - ax, extent.y0 * to_pt - ay, extent.x1 * to_pt - ax, extent.y1 * to_pt - ay)
                old = result.get(i, box)
                result[i] = (min(old[0], box[0]), min(old[1], box[1]), max(old[2], box[2]), max(old[3], box[3]))
    finally:
        figure.dpi = original
    return result


def _search(
    point: tuple[float, float],
    width: float,
    height: float,
    obstacles: np.ndarray,
    labels: np.ndarray,
    leaders: np.ndarray,
    bounds: _Box,
    half_marker: float,
) -> tuple[tuple[float, float], bool] | None:
    """The centre of the nearest free box of this size around `point`, and whether it needs a leader; None if none.

    A spot whose leader crosses no label (and whose box no leader crosses) is taken if there is one; else the
    nearest spot that only crosses leaders.
    """
    px, py = point
    # Beyond this distance from its point a label no longer reads as the point's without a line.
    near = half_marker * math.sqrt(2) + 2
    radius = half_marker + 0.5
    limit = math.hypot(bounds[2] - bounds[0], bounds[3] - bounds[1])
    fallback: tuple[tuple[float, float], bool] | None = None
    while radius <= limit:
        count = 8 * max(1, math.ceil(2 * math.pi * radius / _ARC_STEP_PT / 8))
        angles = _PREFERRED_ANGLE + 2 * math.pi * np.arange(count) / count
        # Nearest the preferred direction first; a stable sort keeps the counter-clockwise order among ties.
        distance = np.abs(np.angle(np.exp(1j * (angles - _PREFERRED_ANGLE))))
        angles = angles[np.argsort(distance, kind="stable")]
        cos, sin = np.cos(angles), np.sin(angles)
        # The anchor on the ring is where the box's border meets the ray from the box's centre to the point.
        scale = np.maximum(np.abs(cos), np.abs(sin))
        cx = px + radius * cos + width / 2 * cos / scale
        cy = py + radius * sin + height / 2 * sin / scale
        boxes = np.stack([cx - width / 2, cy - height / 2, cx + width / 2, cy + height / 2], axis=1)

        free = (
            (boxes[:, 0] >= bounds[0])
            & (boxes[:, 1] >= bounds[1])
            & (boxes[:, 2] <= bounds[2])
            & (boxes[:, 3] <= bounds[3])
            & ~_overlaps(boxes, obstacles).any(axis=1)
        )
        leader = radius > near
        if leader and free.any():
            segments = np.stack([np.full_like(cx, px), np.full_like(cy, py), cx, cy], axis=1)
            clear = free & ~_crosses(segments, labels).any(axis=1) & ~_crosses(leaders, boxes).any(axis=0)
        else:
            clear = free
        if clear.any():
            k = int(np.argmax(clear))
            return (float(cx[k]), float(cy[k])), leader
        if fallback is None and free.any():
            k = int(np.argmax(free))
            fallback = (float(cx[k]), float(cy[k])), leader
        radius += max(_MIN_STEP_PT, _STEP_FRACTION * radius)
    return fallback


def _overlaps(boxes: np.ndarray, others: np.ndarray) -> np.ndarray:
    """(n, m): whether box i's interior meets box j's."""
    a, b = boxes[:, None, :], others[None, :, :]
    result: np.ndarray = (
        (a[..., 0] < b[..., 2]) & (a[..., 2] > b[..., 0]) & (a[..., 1] < b[..., 3]) & (a[..., 3] > b[..., 1])
    )
    return result


def _crosses(segments: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """(s, b): whether segment i passes through box j (Liang-Barsky clipping)."""
    x0, y0 = segments[:, None, 0], segments[:, None, 1]
    dx, dy = segments[:, None, 2] - x0, segments[:, None, 3] - y0
    bx0, by0, bx1, by1 = (boxes[None, :, k] for k in range(4))
    enter = np.zeros((len(segments), len(boxes)))
    leave = np.ones((len(segments), len(boxes)))
    hit = np.ones((len(segments), len(boxes)), dtype=bool)
    # Each side: p * t <= q for the part of the segment inside that side's half-plane.
    for p, q in ((-dx, x0 - bx0), (dx, bx1 - x0), (-dy, y0 - by0), (dy, by1 - y0)):
        p, q = np.broadcast_to(p, hit.shape), np.broadcast_to(q, hit.shape)
        with np.errstate(divide="ignore", invalid="ignore"):
            t = q / p
        hit &= ~((p == 0) & (q < 0))
        enter = np.where(p < 0, np.maximum(enter, t), enter)
        leave = np.where(p > 0, np.minimum(leave, t), leave)
    result: np.ndarray = hit & (enter < leave)
    return result


def _existing_texts(axis: Axes, renderer: Any, ours: set[Annotation], to_pt: float) -> list[_Box]:
    """Boxes, in points, of the texts and legend already in the axes: labels must not cover them either."""
    boxes: list[_Box] = []
    for artist in [*axis.texts, axis.get_legend()]:
        if artist is None or artist in ours or not artist.get_visible():
            continue
        e = artist.get_window_extent(renderer)
        if e.width > 0 and e.height > 0:
            boxes.append((e.x0 * to_pt, e.y0 * to_pt, e.x1 * to_pt, e.y1 * to_pt))
    return boxes


class _Column:
    """The last resort: labels stacked top to bottom right of the axes, a new column when one is full."""

    def __init__(self, left: float, top: float, bottom: float) -> None:
        self.left, self.top, self.bottom = left, top, bottom
        self.cursor = top
        self.width = 0.0

    def take(self, width: float, height: float) -> tuple[float, float]:
        """The centre of the next slot of this size."""
        if self.cursor - height < self.bottom and self.cursor < self.top:
            self.left += self.width
            self.cursor, self.width = self.top, 0.0
        centre = (self.left + width / 2, self.cursor - height / 2)
        self.cursor -= height
        self.width = max(self.width, width)
        return centre

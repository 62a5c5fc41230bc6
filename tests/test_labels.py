"""Scatter labels never overlap each other or the points' markers, as drawn after savefig (Agg, no display)."""

from __future__ import annotations

import itertools
import time
from pathlib import Path

import numpy as np
import pytest
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.text import Annotation, Text
from matplotlib.transforms import Bbox

from orchestrator.labels import place_labels

MARKER_PT = 8.0


def _figure(points: list[tuple[float, float]]) -> tuple[Figure, Axes]:
    """The report's plot as far as labels care: 6.4x4.8 in, a scatter of `points`, titles, tight layout."""
    figure = Figure(figsize=(6.4, 4.8))
    FigureCanvasAgg(figure)
    axis = figure.add_subplot()
    axis.scatter([p[0] for p in points], [p[1] for p in points], s=40, edgecolor="black", zorder=3)
    axis.set_xlabel("accuracy")
    axis.set_ylabel("shape bias")
    axis.set_title("labels", fontsize=9)
    figure.tight_layout()
    return figure, axis


def _texts(count: int) -> list[str]:
    return [f"c{i:03d} layer{1 + i % 4}+layer{2 + i % 3} {1.5 + 0.7 * i:.1f}%" for i in range(count)]


def _clustered(count: int = 25, seed: int = 0) -> list[tuple[float, float]]:
    """`count` points within 0.02 of each other and five spread over the rest of the plot."""
    rng = np.random.default_rng(seed)
    cluster = [(0.80 + 0.02 * rng.random(), 0.40 + 0.02 * rng.random()) for _ in range(count)]
    return cluster + [(0.35, 0.9), (0.5, 0.2), (0.62, 0.55), (0.95, 0.75), (0.7, 0.41)]


def _text_boxes(figure: Figure, annotations: list[Annotation]) -> list[Bbox]:
    """Each label's text as the last draw put it, without its leader line (which may cross things)."""
    canvas = figure.canvas
    assert isinstance(canvas, FigureCanvasAgg)
    canvas.draw()
    renderer = canvas.get_renderer()
    boxes = []
    for annotation in annotations:
        annotation.update_positions(renderer)
        boxes.append(Text.get_window_extent(annotation, renderer))
    return boxes


def _meet(a: Bbox, b: Bbox) -> bool:
    return a.x0 < b.x1 and b.x0 < a.x1 and a.y0 < b.y1 and b.y0 < a.y1


def _overlapping_pairs(boxes: list[Bbox]) -> list[tuple[int, int]]:
    return [(i, j) for (i, a), (j, b) in itertools.combinations(enumerate(boxes), 2) if _meet(a, b)]


def _covered_markers(figure: Figure, axis: Axes, points: list[tuple[float, float]], boxes: list[Bbox]) -> list[int]:
    """Indices of the points whose marker square some label's text box meets."""
    half = MARKER_PT / 2 * figure.dpi / 72
    covered = []
    for i, (x, y) in enumerate(points):
        dx, dy = axis.transData.transform((x, y))
        marker = Bbox.from_extents(dx - half, dy - half, dx + half, dy + half)
        if any(_meet(marker, box) for box in boxes):
            covered.append(i)
    return covered


def _assert_clean(figure: Figure, axis: Axes, points: list[tuple[float, float]], annotations: list[Annotation]):
    boxes = _text_boxes(figure, annotations)
    assert _overlapping_pairs(boxes) == []
    assert _covered_markers(figure, axis, points, boxes) == []


def test_labels_of_clustered_points_never_overlap_as_saved(tmp_path: Path):
    points = _clustered()
    texts = _texts(len(points))
    figure, axis = _figure(points)

    annotations = place_labels(axis, points, texts, marker_size=MARKER_PT, dpi=120)
    figure.savefig(tmp_path / "plot.png", dpi=120)

    assert (tmp_path / "plot.png").stat().st_size > 0
    assert [a.get_text() for a in annotations] == texts
    _assert_clean(figure, axis, points, annotations)
    # The file was written at 120 dpi, not the figure's 100: the geometry must hold there too.
    figure.set_dpi(120)
    _assert_clean(figure, axis, points, annotations)
    # All inside the figure: this many labels fit in the axes without the overflow column.
    assert all(
        figure.bbox.contains(b.x0, b.y0) and figure.bbox.contains(b.x1, b.y1) for b in _text_boxes(figure, annotations)
    )


def test_the_naive_fixed_offset_does_overlap_so_the_check_can_fail():
    points = _clustered()
    figure, axis = _figure(points)

    annotations = [
        axis.annotate(t, p, fontsize=7, xytext=(4, 4), textcoords="offset points")
        for p, t in zip(points, _texts(len(points)), strict=True)
    ]

    boxes = _text_boxes(figure, annotations)
    assert len(_overlapping_pairs(boxes)) > 10
    assert _covered_markers(figure, axis, points, boxes) != []


def test_points_at_exactly_the_same_place_get_separate_labels():
    points = [(0.5, 0.5), (0.5, 0.5), (0.5, 0.5), (0.2, 0.8), (0.2, 0.8)]
    texts = ["dense", "c001 layer1 5.0%", "c002 layer1 5.0%", "c003", "c003 again"]
    figure, axis = _figure(points)

    annotations = place_labels(axis, points, texts, marker_size=MARKER_PT)

    assert sorted(a.get_text() for a in annotations) == sorted(texts)
    _assert_clean(figure, axis, points, annotations)


def test_forty_points_on_one_spot_still_never_overlap_and_return_quickly():
    points = [(0.5 + 1e-4 * (i % 3), 0.5) for i in range(40)] + [(0.0, 0.0), (1.0, 1.0)]
    texts = _texts(len(points))
    figure, axis = _figure(points)

    start = time.perf_counter()
    annotations = place_labels(axis, points, texts, marker_size=MARKER_PT)
    elapsed = time.perf_counter() - start

    assert len(annotations) == len(points)
    _assert_clean(figure, axis, points, annotations)
    assert elapsed < 3


def test_a_full_axes_sends_the_rest_to_a_column_on_the_right():
    # A small figure has room for a few labels only; the rest must still not overlap.
    points = [(0.5, 0.5)] * 30
    figure = Figure(figsize=(2.5, 2))
    FigureCanvasAgg(figure)
    axis = figure.add_subplot()
    axis.scatter([0.5], [0.5], s=40)
    figure.tight_layout()

    annotations = place_labels(axis, points, _texts(30), marker_size=MARKER_PT)

    boxes = _text_boxes(figure, annotations)
    assert _overlapping_pairs(boxes) == []
    assert any(b.x0 > axis.bbox.x1 for b in boxes)


def test_labels_far_from_their_point_get_a_leader_line():
    points = _clustered()
    figure, axis = _figure(points)

    annotations = place_labels(axis, points, _texts(len(points)), marker_size=MARKER_PT)

    boxes = _text_boxes(figure, annotations)
    for annotation, box, point in zip(annotations, boxes, points, strict=True):
        dx, dy = axis.transData.transform(point)
        gap = max(box.x0 - dx, dx - box.x1, box.y0 - dy, dy - box.y1) * 72 / figure.dpi
        if gap > 12:
            assert annotation.arrow_patch is not None
    assert any(a.arrow_patch is not None for a in annotations)
    assert any(a.arrow_patch is None for a in annotations)


def test_the_axis_limits_are_frozen_so_later_artists_do_not_move_the_points():
    points = _clustered()
    figure, axis = _figure(points)
    place_labels(axis, points, _texts(len(points)))
    limits = axis.get_xlim(), axis.get_ylim()

    axis.plot([-5, 5], [-5, 5])

    assert (axis.get_xlim(), axis.get_ylim()) == limits


def test_points_and_texts_must_pair_up():
    figure, axis = _figure([(0.5, 0.5)])
    with pytest.raises(ValueError, match="2 points but 1 texts"):
        place_labels(axis, [(0.5, 0.5), (0.6, 0.6)], ["one"])


def test_a_point_outside_the_view_or_not_finite_gets_no_label():
    figure, axis = _figure([(0.5, 0.5), (0.6, 0.6)])
    axis.set_xlim(0.4, 0.7)

    annotations = place_labels(axis, [(0.5, 0.5), (5.0, 0.5), (float("nan"), 0.5), (0.6, 0.6)], ["a", "b", "c", "d"])

    assert [a.get_text() for a in annotations] == ["a", "d"]


def test_a_constrained_layout_is_applied_before_placing_so_savefig_does_not_move_the_axes(tmp_path: Path):
    points = _clustered(15)
    figure = Figure(figsize=(6.4, 4.8), layout="constrained")
    FigureCanvasAgg(figure)
    axis = figure.add_subplot()
    axis.scatter([p[0] for p in points], [p[1] for p in points], s=40)
    axis.set_ylabel("shape bias")
    before = axis.get_position().bounds

    annotations = place_labels(axis, points, _texts(len(points)), marker_size=MARKER_PT)
    placed_on = axis.get_position().bounds
    figure.savefig(tmp_path / "plot.png")

    # The layout ran inside place_labels (the axes moved then), and not again at savefig.
    assert placed_on != before
    assert axis.get_position().bounds == placed_on
    _assert_clean(figure, axis, points, annotations)

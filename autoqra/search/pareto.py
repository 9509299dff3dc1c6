"""Pareto fronts and the 2-D hypervolume of (quality up, memory down) with a fixed reference point.

The hypervolume is the area dominated by the front and bounded by the reference point
``(quality_ref, memory_ref)``: points with quality <= quality_ref or memory >= memory_ref add
nothing. The reference point is fixed for a run (see the pipeline), so hypervolumes of successive
generations are comparable.
"""

from __future__ import annotations

from collections.abc import Sequence


def dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """``a`` = (quality, memory) dominates ``b``: no worse in both, better in one."""
    return a[0] >= b[0] and a[1] <= b[1] and (a[0] > b[0] or a[1] < b[1])


def front_indices(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the non-dominated points (first of exact duplicates kept), by memory ascending."""
    order = sorted(range(len(points)), key=lambda i: (points[i][1], -points[i][0], i))
    front: list[int] = []
    best_quality = float("-inf")
    for i in order:
        if points[i][0] > best_quality:
            front.append(i)
            best_quality = points[i][0]
    return front


def hypervolume(points: Sequence[tuple[float, float]], reference: tuple[float, float]) -> float:
    """Exact area dominated by ``points`` inside the reference box (sweep over memory ascending)."""
    q_ref, m_ref = reference
    inside = [(q, m) for q, m in points if q > q_ref and m < m_ref]
    if not inside:
        return 0.0
    area = 0.0
    best_q = q_ref
    # memory ascending: each point that raises the best quality so far adds the slab of that gain
    for q, m in sorted(inside, key=lambda p: p[1]):
        if q > best_q:
            area += (q - best_q) * (m_ref - m)
            best_q = q
    return area

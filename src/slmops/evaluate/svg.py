"""Tiny inline-SVG charts for the HTML report: a labelled scatter, horizontal bars and a
heatmap. Plain strings, no dependencies, every label escaped."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

from slmops.evaluate.metrics import Confusion

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf")
FONT = 'font-family="system-ui,sans-serif" font-size="11"'


@dataclass(frozen=True)
class Point:
    label: str
    x: float
    y: float


def _nice_max(value: float) -> float:
    """A round upper bound for an axis (1, 2, 2.5, 5 × 10^k)."""
    if value <= 0:
        return 1.0
    exp = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 2.5, 5, 10):
        if value <= step * exp:
            return step * exp
    return 10 * exp


def _short(text: str, n: int = 24) -> str:
    return text if len(text) <= n else "…" + text[-(n - 1) :]


@dataclass(frozen=True)
class _Plot:
    """A plot area with axes from 0 to ``x_max`` / ``y_max``, grid lines and axis labels."""

    width: int
    height: int
    x_max: float
    y_max: float
    left: int = 56
    right: int = 20
    top: int = 24
    bottom: int = 42

    @property
    def pw(self) -> float:
        return self.width - self.left - self.right

    @property
    def ph(self) -> float:
        return self.height - self.top - self.bottom

    def sx(self, x: float) -> float:
        return self.left + self.pw * x / self.x_max

    def sy(self, y: float) -> float:
        return self.top + self.ph * (1 - max(0.0, y) / self.y_max)

    def frame(self, x_label: str, y_label: str, vertical_grid: bool = True) -> list[str]:
        out = [_open(self.width, self.height, f"{y_label} vs {x_label}"), f'<g {FONT} fill="#444">']
        left, top, pw, ph = self.left, self.top, self.pw, self.ph
        for i in range(6):
            gx, gy = self.x_max * i / 5, self.y_max * i / 5
            if vertical_grid:
                out.append(f'<line x1="{self.sx(gx):.1f}" y1="{top}" x2="{self.sx(gx):.1f}" y2="{top + ph}" '
                           'stroke="#eee"/>')
            y = self.sy(gy)
            out.append(f'<line x1="{left}" y1="{y:.1f}" x2="{left + pw}" y2="{y:.1f}" stroke="#eee"/>')
            out.append(f'<text x="{self.sx(gx):.1f}" y="{top + ph + 14}" text-anchor="middle">{gx:g}</text>')
            out.append(f'<text x="{left - 6}" y="{self.sy(gy) + 4:.1f}" text-anchor="end">{gy:g}</text>')
        out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" fill="none" stroke="#999"/>')
        out.append(f'<text x="{left + pw / 2}" y="{self.height - 6}" text-anchor="middle">{escape(x_label)}</text>')
        out.append(f'<text transform="translate(14 {top + ph / 2}) rotate(-90)" text-anchor="middle">'
                   f"{escape(y_label)}</text>")
        return out

    def close(self, out: list[str], empty: bool) -> str:
        if empty:
            out.append(f'<text x="{self.left + self.pw / 2}" y="{self.top + self.ph / 2}" text-anchor="middle">'
                       "no data</text>")
        out.append("</g></svg>")
        return "".join(out)


def _open(width: int, height: int, title: str) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}">')


def scatter(points: Sequence[Point], x_label: str, y_label: str, width: int = 520, height: int = 320) -> str:
    """Quality (y) against cost (x); each point labelled with its model."""
    x_max = _nice_max(max((p.x for p in points), default=1) * 1.05)
    in_unit = all(0 <= p.y <= 1 for p in points)  # most metrics live in [0, 1]; BLEU and judge scores do not
    y_max = 1.0 if in_unit else _nice_max(max(p.y for p in points) * 1.05)
    plot = _Plot(width, height, x_max, y_max)
    sx, sy, left, pw = plot.sx, plot.sy, plot.left, plot.pw
    out = plot.frame(x_label, y_label)
    for i, p in enumerate(points):
        color = PALETTE[i % len(PALETTE)]
        out.append(f'<circle class="point" cx="{sx(p.x):.1f}" cy="{sy(p.y):.1f}" r="5" fill="{color}">'
                   f"<title>{escape(p.label)}: {p.y:.3f} at {p.x:.0f}</title></circle>")
        anchor = "end" if sx(p.x) > left + pw * 0.7 else "start"
        dx = -8 if anchor == "end" else 8
        out.append(f'<text x="{sx(p.x) + dx:.1f}" y="{sy(p.y) - 6:.1f}" text-anchor="{anchor}" fill="{color}">'
                   f"{escape(_short(p.label))}</text>")
    return plot.close(out, empty=not points)


def bars(items: Sequence[tuple[str, float]], unit: str, width: int = 520, bar_h: int = 22) -> str:
    """Horizontal bars, one per model, value printed at the end of each bar."""
    left, right, top = 170, 70, 8
    height = top * 2 + bar_h * len(items) + 6 * max(len(items) - 1, 0)
    pw = width - left - right
    top_value = max((v for _, v in items), default=1) or 1
    out = [_open(width, height, f"bars ({unit})"), f'<g {FONT} fill="#444">']
    for i, (label, value) in enumerate(items):
        y = top + i * (bar_h + 6)
        w = max(1.0, pw * value / top_value)
        out.append(f'<text x="{left - 6}" y="{y + bar_h / 2 + 4}" text-anchor="end">{escape(_short(label))}</text>')
        out.append(f'<rect class="bar" x="{left}" y="{y}" width="{w:.1f}" height="{bar_h}" '
                   f'fill="{PALETTE[i % len(PALETTE)]}"><title>{escape(label)}: {value:,.1f} {escape(unit)}</title>'
                   "</rect>")
        out.append(f'<text x="{left + w + 4:.1f}" y="{y + bar_h / 2 + 4}">{value:,.1f} {escape(unit)}</text>')
    out.append("</g></svg>")
    return "".join(out)


def heatmap(confusion: Confusion, cell: int = 46) -> str:
    """Gold labels down, predicted labels across; darker = more records."""
    labels, columns = confusion.labels, confusion.columns
    left, top = 110, 70
    width, height = left + cell * len(columns) + 60, top + cell * len(labels) + 10
    peak = max((v for row in confusion.matrix for v in row), default=0) or 1
    out = [_open(width, height, "confusion matrix"), f'<g {FONT}>']
    out.append(f'<text x="{left + cell * len(columns) / 2}" y="12" text-anchor="middle" fill="#444">predicted</text>')
    out.append(f'<text transform="translate(12 {top + cell * len(labels) / 2}) rotate(-90)" text-anchor="middle" '
               'fill="#444">gold</text>')
    for j, col in enumerate(columns):
        x = left + j * cell + cell / 2
        out.append(f'<text transform="translate({x} {top - 6}) rotate(-35)" fill="#444">{escape(_short(col, 12))}'
                   "</text>")
    for i, (label, row) in enumerate(zip(labels, confusion.matrix, strict=True)):
        y = top + i * cell
        out.append(f'<text x="{left - 6}" y="{y + cell / 2 + 4}" text-anchor="end" fill="#444">'
                   f"{escape(_short(label, 14))}</text>")
        for j, value in enumerate(row):
            shade = value / peak
            fill = f"rgb({int(255 - 224 * shade)},{int(255 - 136 * shade)},{int(255 - 75 * shade)})"
            text_fill = "#fff" if shade > 0.55 else "#222"
            out.append(f'<rect class="cell" x="{left + j * cell}" y="{y}" width="{cell}" height="{cell}" '
                       f'fill="{fill}" stroke="#fff"><title>gold {escape(label)}, predicted {escape(columns[j])}: '
                       f"{value}</title></rect>")
            out.append(f'<text x="{left + j * cell + cell / 2}" y="{y + cell / 2 + 4}" text-anchor="middle" '
                       f'fill="{text_fill}">{value}</text>')
    out.append("</g></svg>")
    return "".join(out)


def lines(series: dict[str, Sequence[tuple[float, float]]], x_label: str, y_label: str,
          width: int = 520, height: int = 300) -> str:
    """One polyline per named series (e.g. train and eval loss against the step), with a legend."""
    points = [p for s in series.values() for p in s]
    plot = _Plot(width, height, _nice_max(max((x for x, _ in points), default=1)),
                 _nice_max(max((y for _, y in points), default=1) * 1.05))
    sx, sy, left, top, pw = plot.sx, plot.sy, plot.left, plot.top, plot.pw
    out = plot.frame(x_label, y_label, vertical_grid=False)
    for i, (name, pts) in enumerate(series.items()):
        color = PALETTE[i % len(PALETTE)]
        coords = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in pts)
        out.append(f'<polyline class="series" points="{coords}" fill="none" stroke="{color}" stroke-width="2">'
                   f"<title>{escape(name)}</title></polyline>")
        if len(pts) == 1:
            out.append(f'<circle cx="{sx(pts[0][0]):.1f}" cy="{sy(pts[0][1]):.1f}" r="3" fill="{color}"/>')
        out.append(f'<text x="{left + pw - 6}" y="{top + 14 + 14 * i}" text-anchor="end" fill="{color}">'
                   f"{escape(name)}</text>")
    return plot.close(out, empty=not points)

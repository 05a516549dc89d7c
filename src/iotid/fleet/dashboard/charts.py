"""Charts of the operator dashboard as inline SVG: pure functions from numbers to markup.

Scope: :func:`bar_chart` (labelled horizontal bars), :func:`stacked_bars` (one bar per row split
into coloured parts, with a legend), :func:`time_series` (bars per time bucket, or a line), and
:func:`progress_bar` (a segmented bar with a legend). Each returns :class:`markupsafe.Markup`
(safe to place in an autoescaped template) holding one ``<svg role="img">`` with a ``<title>``,
so screen readers get the chart's name; the pages print the numbers beside it as well.

Safety: every piece of text that reaches the SVG (labels, titles, units, legend entries) goes
through :func:`html.escape` here; colours come only from this module's palettes or from callers
passing a ``#rrggbb`` value (anything else is replaced by grey); numbers are formatted, never
interpolated raw. No ``style`` attributes, no scripts: the dashboard's Content-Security-Policy
forbids inline styles and scripts, and the charts need neither.

Not in scope: data (``service``), page layout (the templates), interactivity (there is none: no
JavaScript chart library is used).
"""

from __future__ import annotations

import datetime as dt
import html
import re
from collections.abc import Mapping, Sequence
from typing import Literal

from markupsafe import Markup

__all__ = [
    "GREY",
    "STATE_COLORS",
    "bar_chart",
    "format_number",
    "progress_bar",
    "stacked_bars",
    "time_series",
]

GREY = "#9aa5b1"
#: Device states in lifecycle order, each with its colour.
STATE_COLORS: dict[str, str] = {
    "manufactured": "#9aa5b1",
    "enrolled": "#4c8bf5",
    "active": "#2e9d5b",
    "rotating": "#e0a100",
    "revoked": "#d64545",
    "retired": "#5b6472",
}
_DEFAULT_BAR = "#4c8bf5"
_COLOR = re.compile(r"#[0-9a-fA-F]{6}")
_FONT = 'font-family="system-ui, sans-serif" font-size="12"'
_LABEL_W = 150
_ROW_H = 22


def _e(text: object) -> str:
    return html.escape(str(text), quote=True)


def _color(value: str | None, default: str = GREY) -> str:
    return value if value is not None and _COLOR.fullmatch(value) else default


def format_number(value: float) -> str:
    """Integers without decimals, other values with up to three significant decimals."""
    if float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:,.3g}" if abs(value) < 1000 else f"{value:,.0f}"


def _svg(width: int, height: int, title: str, body: list[str]) -> Markup:
    head = (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" '
        f'width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
        f'aria-label="{_e(title)}" {_FONT}><title>{_e(title)}</title>'
    )
    return Markup(head + "".join(body) + "</svg>")  # noqa: S704 (every part escaped above)


def _empty(title: str, width: int) -> Markup:
    return _svg(
        width,
        40,
        title,
        [f'<text x="8" y="24" fill="#5b6472">{_e(title)}: no data yet</text>'],
    )


def _clip(label: str, limit: int = 22) -> str:
    return label if len(label) <= limit else label[: limit - 1] + "\u2026"


def bar_chart(
    items: Sequence[tuple[str, float]],
    *,
    title: str,
    colors: Mapping[str, str] | None = None,
    unit: str = "",
    width: int = 520,
) -> Markup:
    """One horizontal bar per ``(label, value)``; ``colors`` by label (default blue)."""
    if not items:
        return _empty(title, width)
    top = max((value for _, value in items), default=0.0)
    area = width - _LABEL_W - 70
    body: list[str] = []
    for i, (label, value) in enumerate(items):
        y = 6 + i * _ROW_H
        bar = 0.0 if top <= 0 else max(0.0, value) / top * area
        given = (colors or {}).get(label)
        fill = _DEFAULT_BAR if given is None else _color(given)
        suffix = f" {unit}" if unit else ""
        body.append(
            f'<text x="{_LABEL_W - 6}" y="{y + 14}" text-anchor="end">{_e(_clip(label))}</text>'
            f'<rect x="{_LABEL_W}" y="{y + 3}" width="{bar:.1f}" height="{_ROW_H - 6}" '
            f'fill="{fill}" rx="2"><title>{_e(label)}: {_e(format_number(value))}{_e(suffix)}'
            f"</title></rect>"
            f'<text x="{_LABEL_W + bar + 6:.1f}" y="{y + 14}">'
            f"{_e(format_number(value))}{_e(suffix)}</text>"
        )
    return _svg(width, 12 + len(items) * _ROW_H, title, body)


def stacked_bars(
    rows: Sequence[tuple[str, Mapping[str, int]]],
    keys: Sequence[str],
    *,
    title: str,
    colors: Mapping[str, str] | None = None,
    width: int = 620,
) -> Markup:
    """One bar per ``(label, {key: count})`` row, its parts in ``keys`` order, with a legend."""
    if not rows:
        return _empty(title, width)
    palette = colors or {}
    top = max((sum(parts.values()) for _, parts in rows), default=0)
    area = width - _LABEL_W - 70
    body: list[str] = []
    for i, (label, parts) in enumerate(rows):
        y = 6 + i * _ROW_H
        x = float(_LABEL_W)
        body.append(
            f'<text x="{_LABEL_W - 6}" y="{y + 14}" text-anchor="end">{_e(_clip(label))}</text>'
        )
        for key in keys:
            count = parts.get(key, 0)
            if count <= 0 or top <= 0:
                continue
            w = count / top * area
            body.append(
                f'<rect x="{x:.1f}" y="{y + 3}" width="{w:.1f}" height="{_ROW_H - 6}" '
                f'fill="{_color(palette.get(key))}"><title>{_e(label)}, {_e(key)}: '
                f"{_e(format_number(count))}</title></rect>"
            )
            x += w
        total = sum(parts.values())
        body.append(f'<text x="{x + 6:.1f}" y="{y + 14}">{_e(format_number(total))}</text>')
    legend_y = 12 + len(rows) * _ROW_H
    x = float(_LABEL_W)
    for key in keys:
        body.append(
            f'<rect x="{x:.1f}" y="{legend_y}" width="10" height="10" '
            f'fill="{_color(palette.get(key))}"/>'
            f'<text x="{x + 14:.1f}" y="{legend_y + 9}">{_e(key)}</text>'
        )
        x += 24 + 7 * len(key)
    return _svg(width, legend_y + 20, title, body)


def _time_label(when: dt.datetime, span: dt.timedelta) -> str:
    if span >= dt.timedelta(days=2):
        return when.strftime("%Y-%m-%d")
    if span >= dt.timedelta(hours=2):
        return when.strftime("%m-%d %H:%M")
    return when.strftime("%H:%M:%S")


def time_series(
    points: Sequence[tuple[dt.datetime, float]],
    *,
    title: str,
    style: Literal["bars", "line"] = "bars",
    bucket: dt.timedelta | None = None,
    unit: str = "",
    width: int = 620,
    height: int = 190,
) -> Markup:
    """Values over time (UTC). ``bars``: one bar per bucket starting at its time (``bucket``
    wide); ``line``: a polyline through the points with a dot on each."""
    if not points:
        return _empty(title, width)
    ordered = sorted(points, key=lambda p: p[0])
    start = ordered[0][0]
    end = ordered[-1][0] + (bucket if style == "bars" and bucket else dt.timedelta(0))
    span = max(end - start, dt.timedelta(seconds=1))
    left, right, top_pad, bottom = 56, 12, 10, 34
    plot_w, plot_h = width - left - right, height - top_pad - bottom
    values = [v for _, v in ordered]
    low = 0.0 if style == "bars" else min(0.0, *values)
    high = max(values) if max(values) > low else low + 1.0

    def x_of(when: dt.datetime) -> float:
        return left + (when - start) / span * plot_w

    def y_of(value: float) -> float:
        return top_pad + plot_h - (value - low) / (high - low) * plot_h

    suffix = f" {unit}" if unit else ""
    body = [
        f'<line x1="{left}" y1="{top_pad + plot_h}" x2="{width - right}" '
        f'y2="{top_pad + plot_h}" stroke="#5b6472"/>',
        f'<line x1="{left}" y1="{top_pad}" x2="{left}" y2="{top_pad + plot_h}" stroke="#5b6472"/>',
    ]
    for tick in (low, (low + high) / 2, high):
        y = y_of(tick)
        body.append(
            f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">'
            f"{_e(format_number(tick))}</text>"
            f'<line x1="{left}" y1="{y:.1f}" x2="{width - right}" y2="{y:.1f}" '
            f'stroke="#d0d5db" stroke-dasharray="2,3"/>'
        )
    label_y = height - 12
    body.append(f'<text x="{left}" y="{label_y}">{_e(_time_label(start, span))}</text>')
    body.append(
        f'<text x="{width - right}" y="{label_y}" text-anchor="end">'
        f"{_e(_time_label(end, span))} UTC</text>"
    )
    if style == "bars":
        step = bucket / span * plot_w if bucket else plot_w / max(1, len(ordered))
        bar_w = max(1.0, step - 1.0)
        for when, value in ordered:
            y = y_of(value)
            body.append(
                f'<rect x="{x_of(when):.1f}" y="{y:.1f}" width="{bar_w:.1f}" '
                f'height="{top_pad + plot_h - y:.1f}" fill="{_DEFAULT_BAR}">'
                f"<title>{_e(when.strftime('%Y-%m-%d %H:%M:%S'))} UTC: "
                f"{_e(format_number(value))}{_e(suffix)}</title></rect>"
            )
    else:
        path = " ".join(f"{x_of(w):.1f},{y_of(v):.1f}" for w, v in ordered)
        body.append(f'<polyline points="{path}" fill="none" stroke="{_DEFAULT_BAR}" />')
        for when, value in ordered:
            body.append(
                f'<circle cx="{x_of(when):.1f}" cy="{y_of(value):.1f}" r="2.5" '
                f'fill="{_DEFAULT_BAR}"><title>{_e(when.strftime("%Y-%m-%d %H:%M:%S"))} UTC: '
                f"{_e(format_number(value))}{_e(suffix)}</title></circle>"
            )
    return _svg(width, height, title, body)


def progress_bar(
    segments: Sequence[tuple[str, int, str]],
    total: int,
    *,
    title: str,
    width: int = 520,
) -> Markup:
    """A bar ``total`` wide filled by ``(label, count, colour)`` segments, with a legend giving
    each count and share; what the segments do not cover stays grey ("remaining")."""
    bar_w = width - 16
    body = [f'<rect x="8" y="6" width="{bar_w}" height="16" fill="#e6e9ed" rx="3"/>']
    x = 8.0
    for label, count, color in segments:
        if total <= 0 or count <= 0:
            continue
        w = min(count, total) / total * bar_w
        body.append(
            f'<rect x="{x:.1f}" y="6" width="{w:.1f}" height="16" fill="{_color(color)}">'
            f"<title>{_e(label)}: {_e(format_number(count))}</title></rect>"
        )
        x += w
    legend_x = 8.0
    covered = sum(max(0, count) for _, count, _ in segments)
    entries = [*segments, ("remaining", max(0, total - covered), "#e6e9ed")]
    for label, count, color in entries:
        share = 0 if total <= 0 else round(100 * count / total)
        text = f"{label} {format_number(count)} ({share}%)"
        body.append(
            f'<rect x="{legend_x:.1f}" y="30" width="10" height="10" fill="{_color(color)}" '
            f'stroke="#9aa5b1"/><text x="{legend_x + 14:.1f}" y="39">{_e(text)}</text>'
        )
        legend_x += 26 + 6.5 * len(text)
    return _svg(max(width, int(legend_x)), 48, title, body)

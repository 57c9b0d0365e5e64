"""Tiny inline-SVG charts: the report must open offline, so no charting library from a CDN.
Every text that could come from traffic goes through `escape`."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

from markupsafe import Markup, escape

W, H, PAD = 520, 220, 46
COLORS = {"baseline": "#4e79a7", "candidate": "#e15759", "noise": "#9c9c9c"}


def _fmt(v: float) -> str:
    if v == 0 or not math.isfinite(v):
        return "0"
    a = abs(v)
    if a >= 1000:
        return f"{v:.0f}"
    if a >= 1:
        return f"{v:.2f}".rstrip("0").rstrip(".")
    return f"{v:.3g}"


def _frame(title: str, body: str, x_lo: float, x_hi: float, y_hi: float, legend: Sequence[tuple[str, str]] = ()) -> Markup:
    leg = "".join(
        f'<rect x="{W - 150}" y="{8 + 16 * i}" width="10" height="10" fill="{c}"/>'
        f'<text x="{W - 135}" y="{17 + 16 * i}" font-size="11">{escape(name)}</text>'
        for i, (name, c) in enumerate(legend)
    )
    axes = (
        f'<line x1="{PAD}" y1="{H - PAD}" x2="{W - 10}" y2="{H - PAD}" stroke="#555"/>'
        f'<line x1="{PAD}" y1="10" x2="{PAD}" y2="{H - PAD}" stroke="#555"/>'
        f'<text x="{PAD}" y="{H - PAD + 14}" font-size="10">{_fmt(x_lo)}</text>'
        f'<text x="{W - 10}" y="{H - PAD + 14}" font-size="10" text-anchor="end">{_fmt(x_hi)}</text>'
        f'<text x="{PAD - 4}" y="16" font-size="10" text-anchor="end">{_fmt(y_hi)}</text>'
    )
    return Markup(
        f"<figure><figcaption>{escape(title)}</figcaption>"
        f'<svg viewBox="0 0 {W} {H}" width="{W}" height="{H}" role="img" aria-label="{escape(title)}">'
        f"{axes}{body}{leg}</svg></figure>"
    )


def histogram(title: str, edges: Sequence[float], series: Mapping[str, Sequence[float]]) -> Markup:
    """Overlaid histograms (shares per bin) over shared bin edges."""
    if len(edges) < 2 or not series:
        return Markup(f"<p class=muted>{escape(title)}: no data</p>")
    y_hi = max((max(v) for v in series.values() if len(v)), default=1.0) or 1.0
    nb = len(edges) - 1
    bw = (W - PAD - 10) / nb
    body = []
    for k, (name, vals) in enumerate(series.items()):
        color = COLORS.get(name, "#59a14f")
        for i, v in enumerate(vals):
            h = (H - PAD - 10) * v / y_hi
            body.append(
                f'<rect x="{PAD + i * bw + k * bw / len(series):.1f}" y="{H - PAD - h:.1f}" '
                f'width="{max(bw / len(series) - 0.5, 0.5):.1f}" height="{h:.1f}" fill="{color}" opacity="0.8">'
                f"<title>{escape(name)} [{_fmt(edges[i])}, {_fmt(edges[i + 1])}): {v:.2%}</title></rect>"
            )
    return _frame(title, "".join(body), edges[0], edges[-1], y_hi, [(n, COLORS.get(n, "#59a14f")) for n in series])


def scatter(title: str, xs: Sequence[float], ys: Sequence[float]) -> Markup:
    if not xs:
        return Markup(f"<p class=muted>{escape(title)}: no data</p>")
    lo = min(min(xs), min(ys))
    hi = max(max(xs), max(ys))
    span = (hi - lo) or 1.0

    def px(v: float) -> float:
        return PAD + (W - PAD - 10) * (v - lo) / span

    def py(v: float) -> float:
        return H - PAD - (H - PAD - 10) * (v - lo) / span

    pts = "".join(f'<circle cx="{px(x):.1f}" cy="{py(y):.1f}" r="1.6"/>' for x, y in zip(xs, ys, strict=False))
    diag = f'<line x1="{px(lo):.1f}" y1="{py(lo):.1f}" x2="{px(hi):.1f}" y2="{py(hi):.1f}" stroke="#999" stroke-dasharray="4"/>'
    return _frame(title + " (x: baseline, y: candidate)", diag + f'<g fill="#e15759" opacity="0.5">{pts}</g>', lo, hi, hi)


def lines(title: str, xs: Sequence[str], series: Mapping[str, Sequence[float | None]], as_share: bool = True) -> Markup:
    """Time series (x = labels in order)."""
    if not xs:
        return Markup(f"<p class=muted>{escape(title)}: no data</p>")
    y_hi = max((v for vals in series.values() for v in vals if v is not None), default=0.0) or 1.0
    n = len(xs)
    body = []
    for name, vals in series.items():
        pts = [
            f"{PAD + (W - PAD - 10) * i / max(n - 1, 1):.1f},{H - PAD - (H - PAD - 10) * v / y_hi:.1f}"
            for i, v in enumerate(vals)
            if v is not None
        ]
        body.append(f'<polyline fill="none" stroke="{COLORS.get(name, "#59a14f")}" stroke-width="1.5" points="{" ".join(pts)}"/>')
    frame = _frame(title, "".join(body), 0, 0, y_hi, [(k, COLORS.get(k, "#59a14f")) for k in series])
    return Markup(
        str(frame).replace(">0</text>", f">{escape(xs[0])}</text>", 1).replace(">0</text>", f">{escape(xs[-1])}</text>", 1)
    )


def reliability(title: str, sides: Mapping[str, Sequence[Sequence[float]]]) -> Markup:
    """A reliability (calibration) plot: per side, each bin's mean score (x) against the rate
    observed in it (y), on [0, 1] both ways; the diagonal is perfect calibration. A point's
    size grows with its bin's pairs."""
    if not any(sides.values()):
        return Markup(f"<p class=muted>{escape(title)}: no probability scores with outcomes</p>")
    most = max(b[2] for bins in sides.values() for b in bins) or 1.0

    def px(v: float) -> float:
        return PAD + (W - PAD - 10) * v

    def py(v: float) -> float:
        return H - PAD - (H - PAD - 10) * v

    body = [f'<line x1="{px(0):.1f}" y1="{py(0):.1f}" x2="{px(1):.1f}" y2="{py(1):.1f}" stroke="#999" stroke-dasharray="4"/>']
    for name, bins in sides.items():
        color = COLORS.get(name, "#59a14f")
        pts = " ".join(f"{px(b[0]):.1f},{py(b[1]):.1f}" for b in bins)
        body.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.5" points="{pts}"/>')
        for b in bins:
            radius = 2 + 3 * math.sqrt(b[2] / most)
            tip = f"{escape(name)}: mean score {_fmt(b[0])}, observed {_fmt(b[1])}, {int(b[2])} pairs"
            body.append(
                f'<circle cx="{px(b[0]):.1f}" cy="{py(b[1]):.1f}" r="{radius:.1f}" fill="{color}" opacity="0.8">'
                f"<title>{tip}</title></circle>"
            )
    legend = [(n, COLORS.get(n, "#59a14f")) for n in sides]
    return _frame(title + " (x: mean score, y: observed rate)", "".join(body), 0.0, 1.0, 1.0, legend)

"""Line charts as plain SVG, for the results scripts' curves (no plotting library is
installed by scripts/setup.sh, and a chart needs only lines, points, axes and text)."""
import math

WIDTH, HEIGHT = 760, 440
LEFT, RIGHT, TOP, BOTTOM = 80, 210, 40, 60
COLOURS = ["#cd2d2d", "#3168b2", "#3a9650", "#969696", "#965abe", "#e08a1e", "#222222", "#2ab0b0"]


def _ticks(lo, hi, log):
    if log:
        return [10 ** e for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1)]
    step = 10 ** math.floor(math.log10((hi - lo) or 1))
    for mult in (1, 2, 5, 10):
        if (hi - lo) / (step * mult) <= 8:
            step *= mult
            break
    first = math.floor(lo / step) * step
    return [first + i * step for i in range(int((hi - first) / step) + 2)]


def _label(v):
    return f"{v:g}" if abs(v) < 1e5 else f"{v:.0e}"


def line_chart(title, x_label, y_label, series, log_y=True):
    """SVG text of a chart of `series`, a list of (name, [(x, y), ...]); y > 0 on a log
    axis (a non-positive y is left out of its line)."""
    pts = [(x, y) for _, line in series for x, y in line if not log_y or y > 0]
    xs, ys = [x for x, _ in pts], [y for _, y in pts]
    x_lo, x_hi = min(xs), max(xs)
    if x_lo == x_hi:
        x_lo, x_hi = x_lo - 1, x_hi + 1
    y_ticks = _ticks(min(ys), max(ys), log_y) if log_y else _ticks(min(0, min(ys)), max(ys), False)
    y_lo, y_hi = y_ticks[0], y_ticks[-1]
    if y_lo == y_hi:
        y_hi = y_lo * 10 if log_y else y_lo + 1
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM

    def sx(x):
        return LEFT + (x - x_lo) / (x_hi - x_lo) * plot_w

    def sy(y):
        if log_y:
            f = (math.log10(y) - math.log10(y_lo)) / (math.log10(y_hi) - math.log10(y_lo))
        else:
            f = (y - y_lo) / (y_hi - y_lo)
        return TOP + plot_h - f * plot_h

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" '
           f'font-family="DejaVu Sans, sans-serif" font-size="12">',
           f'<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>',
           f'<text x="{LEFT}" y="{TOP - 16}" font-size="14">{title}</text>']
    for t in y_ticks:
        if y_lo <= t <= y_hi:
            out.append(f'<line x1="{LEFT}" x2="{LEFT + plot_w}" y1="{sy(t):.1f}" y2="{sy(t):.1f}" stroke="#e4e4e4"/>')
            out.append(f'<text x="{LEFT - 6}" y="{sy(t) + 4:.1f}" text-anchor="end">{_label(t)}</text>')
    for t in sorted(set(xs)):
        out.append(f'<line x1="{sx(t):.1f}" x2="{sx(t):.1f}" y1="{TOP + plot_h}" y2="{TOP + plot_h + 4}" stroke="black"/>')
        out.append(f'<text x="{sx(t):.1f}" y="{TOP + plot_h + 18}" text-anchor="middle">{_label(t)}</text>')
    out.append(f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="black"/>')
    out.append(f'<text x="{LEFT + plot_w / 2}" y="{HEIGHT - 18}" text-anchor="middle">{x_label}</text>')
    out.append(f'<text transform="translate(18 {TOP + plot_h / 2}) rotate(-90)" text-anchor="middle">'
               f'{y_label}{" (log)" if log_y else ""}</text>')
    for i, (name, line) in enumerate(series):
        colour = COLOURS[i % len(COLOURS)]
        line = sorted((x, y) for x, y in line if not log_y or y > 0)
        if not line:
            continue
        path = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in line)
        out.append(f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2"/>')
        out += [f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{colour}"/>' for x, y in line]
        ly = TOP + 8 + i * 18
        out.append(f'<line x1="{LEFT + plot_w + 12}" x2="{LEFT + plot_w + 32}" y1="{ly}" y2="{ly}" '
                   f'stroke="{colour}" stroke-width="2"/>')
        out.append(f'<text x="{LEFT + plot_w + 38}" y="{ly + 4}">{name}</text>')
    out.append("</svg>")
    return "\n".join(out) + "\n"

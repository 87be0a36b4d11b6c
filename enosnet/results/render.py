r"""HTML and Markdown pieces every results page shares: escaping, tables, definition lists, the page itself.

The page is self-contained: styles inline, and a Content-Security-Policy that
loads nothing but embedded ``data:`` images, so it works offline and as a mail
attachment. No matplotlib here: ``enosnet compare`` renders without it.

>>> md_table(["a", "b"], [["1", "x|y"]])
['| a | b |', '|---|---|', '| 1 | x\\|y |']
"""

from __future__ import annotations

import base64
import html
import math
import re
from collections.abc import Iterable, Sequence

_PREFIXES = [(1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")]


def esc(text: object) -> str:
    """``text`` escaped for HTML (attributes included)."""
    return html.escape(str(text), quote=True)


def md_esc(text: object) -> str:
    """``text`` safe in a Markdown table cell or bullet."""
    return str(text).replace("|", "\\|").replace("*", "\\*")


def html_dl(items: Iterable[tuple[str, str]]) -> str:
    return "<dl>" + "".join(f"<dt>{esc(k)}</dt><dd>{esc(v)}</dd>" for k, v in items) + "</dl>"


def html_table(head: Sequence[str], rows: Sequence[Sequence[str]], *, row_classes: Sequence[str] = ()) -> str:
    """A table; ``row_classes`` gives each row a CSS class (``bad`` shades it red), empty for none."""
    if not rows:
        return "<p>None recorded.</p>"
    classes = [*row_classes, *[""] * (len(rows) - len(row_classes))]
    cells = "".join((f"<tr class={cls}>" if cls else "<tr>") + "".join(f"<td>{esc(c)}</td>" for c in row) + "</tr>"
                    for row, cls in zip(rows, classes, strict=True))
    return f"<table><thead><tr>{''.join(f'<th>{esc(h)}</th>' for h in head)}</tr></thead><tbody>{cells}</tbody></table>"


def md_table(head: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    if not rows:
        return ["None recorded."]
    return ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] + [
        "| " + " | ".join(md_esc(c) for c in row) + " |" for row in rows]


def scale(values: Sequence[float], unit: str) -> tuple[float, str]:
    """A divisor and unit label that keep numbers short: bit/s → Mbit/s when values are millions.

    >>> scale([9.4e9, 8.1e9], "bit/s")
    (1000000000.0, 'Gbit/s')
    >>> scale([12.0], "ms")
    (1.0, 'ms')
    """
    if not unit or not re.match(r"^(bit|B|byte|bytes|bits)(/s)?$", unit) or not values:
        return 1.0, unit
    top = max(abs(v) for v in values)
    for factor, prefix in _PREFIXES:
        if top >= factor:
            return factor, f"{prefix}{unit}"
    return 1.0, unit


def num(x: float) -> str:
    """A number as the pages print it: 3 significant digits, whole numbers from 1000, ``—`` for none.

    >>> num(17.94), num(28061.2), num(float("nan"))
    ('17.9', '28,061', '—')
    """
    if math.isnan(x):
        return "—"
    return f"{x:.3g}" if abs(x) < 1000 else f"{x:,.0f}"


def with_unit(value: float, unit: str, factor: float, label: str) -> str:
    """``value`` in the unit ``scale`` chose, printed by ``num``: ``9.4 Gbit/s``, ``12 ms``.

    >>> with_unit(9.4e9, "bit/s", *scale([9.4e9], "bit/s"))
    '9.4 Gbit/s'
    """
    return f"{num(value / factor)} {label}".rstrip()


def html_figure(name: str, title: str, caption: str, png: bytes) -> str:
    """A plot embedded in the page (a ``data:`` PNG) with its title and caption."""
    data = base64.b64encode(png).decode()
    return (f'<figure id="plot-{esc(name)}"><img alt="{esc(title)}" src="data:image/png;base64,{data}">'
            f"<figcaption><b>{esc(title)}.</b> {esc(caption)}</figcaption></figure>")


def html_page(title: str, body: str) -> str:
    """The whole self-contained page around ``body`` (already HTML); ``title`` is escaped here."""
    return _HTML.format(title=esc(title), css=_CSS, body=body)


_HTML = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'">
<title>{title}</title><style>{css}</style></head>
<body><main>
{body}
</main></body></html>
"""

_CSS = """
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #1d1d1f; margin: 0;
       background: #f6f7f9; }
main { max-width: 1100px; margin: 0 auto; padding: 24px 32px 48px; background: #fff; }
h1 { font-size: 26px; margin: 0 0 12px; } h2 { font-size: 20px; margin-top: 32px; border-bottom: 1px solid #ddd; }
h3 { font-size: 16px; margin: 18px 0 6px; } small { color: #666; font-weight: normal; }
dl { display: grid; grid-template-columns: max-content 1fr; gap: 2px 16px; margin: 0; }
dt { color: #555; } dd { margin: 0; }
ul.findings { padding-left: 20px; } ul.findings li { margin: 3px 0; }
ul.findings li.yes { font-weight: 600; } ul.findings li.no { color: #555; }
.warn-box { background: #fff6e0; border-left: 4px solid #e6a100; padding: 4px 16px; margin: 16px 0; }
.ok-box { background: #eaf7ec; border-left: 4px solid #2e9b47; padding: 8px 16px; }
figure { margin: 18px 0; } figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { color: #444; font-size: 13px; }
table { border-collapse: collapse; font-size: 13px; margin: 6px 0 12px; }
th, td { border: 1px solid #ddd; padding: 3px 8px; text-align: left; vertical-align: top; }
th { background: #f0f2f5; } tbody tr:nth-child(even) { background: #fafbfc; } tbody tr.bad { background: #fde8e8; }
footer { margin-top: 40px; color: #777; font-size: 12px; }
"""

"""A self-contained HTML page: one file a person opens in a browser, with no network needed.

Why a builder of our own: the page is a handful of headings, tables, embedded PNGs and short notes,
so a templating engine would add a dependency for nothing. Everything is escaped; images are
embedded as base64 data URIs; the style sheet is inline; there is no script. The page is made of
plain blocks (`Text`, `Code`, `Facts`, `Figure`, and the same `report.tables.Table`s the terminal
draws, so both always show the same figures) grouped in `Section`s, each of which can say how it was
made (the command and its settings).

>>> from superweight.report.tables import Column
>>> t = Table("sizes", [Column("model"), Column("params", "right")], [["smollm2-135m", "134.5M"]])
>>> "<table" in Page("demo", sections=[Section("Numbers", [t])]).render()
True
"""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence, Union

from superweight.errors import SuperweightError
from superweight.report.tables import Table


@dataclass
class Text:
    """A paragraph of plain text (escaped); `tone` "note" or "warning" draws it as a callout."""

    text: str
    tone: str | None = None


@dataclass
class Code:
    """A command or a snippet, shown verbatim."""

    text: str


@dataclass
class Facts:
    """Key/value pairs, shown as a two-column list."""

    items: Sequence[tuple[str, object]]


@dataclass
class Figure:
    """A PNG embedded in the page: from a file path or raw bytes."""

    png: Union[str, Path, bytes]
    caption: str | None = None


Block = Union[Text, Code, Facts, Table, Figure]


@dataclass
class Section:
    """A titled part of the page; `how` says how its figures were made (command and settings)."""

    title: str
    blocks: list[Block] = field(default_factory=list)
    how: str | None = None

    @property
    def anchor(self) -> str:
        return re.sub(r"[^a-z0-9]+", "-", self.title.lower()).strip("-") or "section"


@dataclass
class Page:
    """The whole report: a title, a subtitle line and sections, with a table of contents."""

    title: str
    subtitle: str | None = None
    sections: list[Section] = field(default_factory=list)

    def render(self) -> str:
        anchors = _unique_anchors(self.sections)
        toc = "".join(f'<li><a href="#{a}">{_e(s.title)}</a></li>' for s, a in zip(self.sections, anchors))
        body = "".join(_section(s, a) for s, a in zip(self.sections, anchors))
        sub = f'<p class="sub">{_e(self.subtitle)}</p>' if self.subtitle else ""
        return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
                f'<meta name="viewport" content="width=device-width, initial-scale=1">'
                f"<title>{_e(self.title)}</title><style>{CSS}</style></head><body>"
                f"<header><h1>{_e(self.title)}</h1>{sub}</header>"
                f'<nav><ol>{toc}</ol></nav><main>{body}</main></body></html>\n')

    def write(self, out_dir: str | Path) -> Path:
        """Write `out_dir/index.html` atomically and return its path."""
        from superweight._io import atomic_write

        text = self.render()
        return atomic_write(Path(out_dir) / "index.html", lambda tmp: tmp.write_text(text, encoding="utf-8"))


def _unique_anchors(sections: Sequence[Section]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for s in sections:
        a = s.anchor
        seen[a] = seen.get(a, 0) + 1
        out.append(a if seen[a] == 1 else f"{a}-{seen[a]}")
    return out


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _cell(value: object) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return format(value, ".4g")
    return str(value)


def _table(t: Table) -> str:
    """A `report.tables.Table`: its title as caption, right-justified columns as numbers, a rule
    after each section, then its notes."""
    out = []
    if t.columns:
        head = "".join(f"<th>{_e(c.name)}</th>" for c in t.columns)
        rows = []
        for i, row in enumerate(t.rows):
            if len(row) != len(t.columns):
                raise SuperweightError(f"a table row has {len(row)} cells for {len(t.columns)} columns")
            cells = "".join(f'<td class="{"num" if c.justify == "right" else "txt"}">{_e(v)}</td>'
                            for c, v in zip(t.columns, row))
            rule = ' class="rule"' if i in t.sections else ""
            rows.append(f"<tr{rule}>{cells}</tr>")
        cap = f"<caption>{_e(t.title)}</caption>" if t.title else ""
        out.append(f'<div class="scroll"><table>{cap}<thead><tr>{head}</tr></thead>'
                   f'<tbody>{"".join(rows)}</tbody></table></div>')
    elif t.title:
        out.append(f"<h3>{_e(t.title)}</h3>")
    out += [f'<p class="tnote">{_e(n)}</p>' for n in t.notes]
    return "".join(out)


def _png_bytes(png: Union[str, Path, bytes]) -> bytes:
    if isinstance(png, bytes):
        data = png
    else:
        try:
            data = Path(png).read_bytes()
        except OSError as e:
            raise SuperweightError(f"cannot read the figure {str(png)!r}: {e.strerror or e}") from None
    if not data.startswith(b"\x89PNG\r\n\x1a\n"):
        raise SuperweightError("a figure is not a PNG image")
    return data


def _figure(f: Figure) -> str:
    uri = "data:image/png;base64," + base64.b64encode(_png_bytes(f.png)).decode("ascii")
    cap = f"<figcaption>{_e(f.caption)}</figcaption>" if f.caption else ""
    return f'<figure><img src="{uri}" alt="{_e(f.caption or "figure")}">{cap}</figure>'


def _block(b: Block) -> str:
    if isinstance(b, Text):
        cls = f' class="{_e(b.tone)}"' if b.tone else ""
        return f"<p{cls}>{_e(b.text)}</p>"
    if isinstance(b, Code):
        return f"<pre><code>{_e(b.text)}</code></pre>"
    if isinstance(b, Facts):
        items = "".join(f"<dt>{_e(k)}</dt><dd>{_e(_cell(v))}</dd>" for k, v in b.items)
        return f"<dl>{items}</dl>"
    if isinstance(b, Table):
        return _table(b)
    if isinstance(b, Figure):
        return _figure(b)
    raise TypeError(f"not a report block: {type(b).__name__}")


def _section(s: Section, anchor: str) -> str:
    how = f'<p class="how">How it was made: <code>{_e(s.how)}</code></p>' if s.how else ""
    return f'<section id="{anchor}"><h2>{_e(s.title)}</h2>{"".join(map(_block, s.blocks))}{how}</section>'


CSS = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d2330;background:#fafbfc;
margin:0 auto;max-width:1100px;padding:0 24px 48px}
header{border-bottom:3px solid #c0392b;margin-bottom:12px}h1{margin:24px 0 4px;font-size:28px}
.sub{color:#566;margin:0 0 12px}nav ol{columns:2;margin:8px 0 16px;padding-left:20px}
nav a{color:#1f5fa8;text-decoration:none}section{background:#fff;border:1px solid #e1e4e8;border-radius:6px;
padding:4px 20px 16px;margin:16px 0}h2{font-size:20px;border-bottom:1px solid #eee;padding-bottom:4px}
.scroll{overflow-x:auto}table{border-collapse:collapse;margin:8px 0;font-size:13px}
caption{text-align:left;font-weight:600;padding:4px 0}th,td{border:1px solid #dde;padding:3px 8px}
th{background:#f0f3f7;text-align:left}td.txt:first-child{white-space:nowrap}td.num{text-align:right;font-variant-numeric:tabular-nums}
tbody tr:nth-child(even){background:#f8f9fb}tr.rule td{border-bottom:2px solid #99a}
h3{font-size:16px;margin:12px 0 4px}p.tnote{margin:4px 0;font-size:14px}figure{margin:12px 0}img{max-width:100%;border:1px solid #eee}
figcaption{color:#566;font-size:13px}pre{background:#f3f4f6;padding:8px 12px;overflow-x:auto;border-radius:4px}
dl{display:grid;grid-template-columns:max-content auto;gap:2px 16px}dt{font-weight:600}dd{margin:0}
p.note{background:#eef6ff;border-left:4px solid #1f5fa8;padding:6px 10px}
p.warning{background:#fff4e5;border-left:4px solid #d9822b;padding:6px 10px}.how{color:#566;font-size:13px}
"""

"""The HTML page builder: escaping, embedded images, atomic write; and offline rendering in Chromium."""

from __future__ import annotations

import re

import pytest

from superweight.errors import SuperweightError
from superweight.report import browser
from superweight.report.html import Code, Facts, Figure, Page, Section, Text
from superweight.report.tables import Column, Table


def _png(tmp_path):
    from superweight.report.figures import new_figure, save_png

    fig, axes = new_figure(1, 1, (3, 2))
    axes[0][0].plot([0, 1, 2], [1, 10, 100], color="tab:red", lw=4)
    return save_png(fig, tmp_path / "plot.png")


def _page(tmp_path) -> Page:
    return Page("superweight report: <tiny>", "a subtitle", [
        Section("Super weights", [Text("found & verified", tone="note"),
                                  Table("candidates", [Column("(layer, row, col)"), Column("value", "right"),
                                                       Column("ok")],
                                        [["(2, 7, 11)", "50", "yes"], ["(3, 1, 2)", "1.235e+06", "no"]],
                                        notes=["a note under the table"], sections={0})],
                how="superweight detect tiny --verify"),
        Section("Plots", [Figure(_png(tmp_path), "Figure 3"), Code("superweight trace --plot out"),
                          Facts([("model", "tiny"), ("layers", 6)])]),
        Section("Plots", [Text("a second section with the same title")]),
    ])


def test_page_escapes_embeds_and_links_sections(tmp_path):
    text = _page(tmp_path).render()
    assert "<tiny>" not in text and "&lt;tiny&gt;" in text
    assert "found &amp; verified" in text
    assert text.count("data:image/png;base64,") == 1
    assert 'href="#plots"' in text and 'href="#plots-2"' in text  # unique anchors
    assert '<td class="num">1.235e+06</td>' in text and ">yes<" in text and "a note under the table" in text
    assert '<caption>candidates</caption>' in text and '<tr class="rule">' in text
    assert "How it was made" in text
    # nothing is fetched from anywhere: no external sources, styles or scripts
    assert not re.search(r'(src|href)="(https?:)?//', text)
    assert "<script" not in text


def test_write_is_atomic_and_bad_blocks_are_clear_errors(tmp_path):
    path = _page(tmp_path).write(tmp_path / "out")
    assert path.name == "index.html" and path.read_text().startswith("<!DOCTYPE html>")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["index.html"]
    with pytest.raises(SuperweightError, match="2 cells for 3 columns"):
        Page("x", sections=[Section("t", [Table("t", [Column("a"), Column("b"), Column("c")], [["1", "2"]])])]).render()
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(SuperweightError, match="not a PNG"):
        Page("x", sections=[Section("t", [Figure(tmp_path / "bad.png")])]).render()
    with pytest.raises(SuperweightError, match="cannot read the figure"):
        Page("x", sections=[Section("t", [Figure(tmp_path / "missing.png")])]).render()


@pytest.mark.skipif(browser.find_browser() is None, reason="Chromium is not installed (make test installs it)")
def test_page_renders_offline_in_chromium(tmp_path):
    from PIL import Image

    path = _page(tmp_path).write(tmp_path / "out")
    dom = browser.dump_dom(path)
    assert "Super weights" in dom and "data:image/png;base64," in dom
    png = browser.screenshot(path, tmp_path / "shot.png", width=900, height=1400)
    img = Image.open(png).convert("RGB")
    colors = img.getcolors(maxcolors=1 << 20)
    assert colors is not None and len(colors) > 50  # text, tables and a plot, not a blank page
    reds = sum(n for n, (r, g, b) in colors if r > 150 and g < 90 and b < 90)
    assert reds > 200  # the embedded plot's red line (and the header rule) were drawn

"""The census as a person reads it: the table (terminal, markdown, CSV), the cross-model plots, the
HTML section and page, and the progress line with the time left.

Every figure comes from the rows of `superweight.census.summary` — the same rows in every format.
"""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path

from superweight.report.html import Code, Facts, Page, Section, Text
from superweight.report.tables import Column, Table, num

COLUMNS = [Column("model"), Column("status"), Column("arch"), Column("params", "right"),
           Column("layers", "right"), Column("massive (origins)"), Column("SW found / verified", "right"),
           Column("super weights"), Column("max ppl×", "right"), Column("|SA|", "right"), Column("catalog"),
           Column("time", "right"), Column("peak RAM", "right")]


def _params(n) -> str:
    if n is None:
        return "–"
    for unit, size in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return str(n)


def _mem(n) -> str:
    from superweight.model.budget import format_size

    return format_size(n) if n else "–"


def _coords(sws) -> str:
    return " ".join(f"({', '.join(map(str, c))})" for c in sws) if sws else "none"


def census_table(rows: list[dict], title: str = "Census") -> Table:
    """One row per model; a failed model shows its one-line error."""
    out, notes = [], []
    for r in rows:
        if r["status"] != "done":
            out.append([r["ref"], "failed", "–", "–", "–", "–", "–", "–", "–", "–", "–",
                        f"{r['seconds']:.1f} s" if r["seconds"] is not None else "–", _mem(r["peak_ram_bytes"])])
            notes.append(f"{r['ref']}: {r['error']}")
            continue
        found = f"{r['candidates']} / {r['verified'] if r['verified'] is not None else '–'}"
        massive = f"{r['massive']} ({r['origins']})" if r["massive"] else "0"
        out.append([r["ref"], "done", r["architecture"], _params(r["params"]), str(r["layers"]), massive, found,
                    _coords(r["super_weights"]) if r["verified"] is not None else "(not verified)",
                    num(r["max_ppl_ratio"], ".3g") if r["max_ppl_ratio"] is not None else "–",
                    num(r["super_activation"], ".4g") if r["super_activation"] is not None else "–",
                    r["catalog"], f"{r['seconds']:.1f} s", _mem(r["peak_ram_bytes"])])
        if r.get("ablation"):
            notes.append(f"{r['ref']}: Table 1 (quick): " + "; ".join(
                f"{cond} " + (", ".join(f"{'avg' if k == 'average' else k} "
                                        f"{v * 100:.1f}%" if k == "average" else f"{k} {v:.4g}"
                                        for k, v in figs.items()) if figs else "not run")
                for cond, figs in r["ablation"].items()))
    notes.insert(0, "SW found / verified: early super weight candidates / those verification kept (– : not "
                    "verified); max ppl×: the largest perplexity ratio one zeroed candidate caused; |SA|: the "
                    "largest super activation")
    return Table(title, COLUMNS, out, notes)


def csv_text(rows: list[dict]) -> str:
    """The rows as CSV (lists as JSON)."""
    from superweight.census.summary import FIELDS

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(FIELDS), lineterminator="\n")
    w.writeheader()
    for r in rows:
        w.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else ("" if v is None else v)
                    for k, v in r.items()})
    return buf.getvalue()


def write_outputs(out_dir: Path, payload: dict, title: str, command: str | None = None) -> list[Path]:
    """census.json, census.csv and index.html (with the plots) in `out_dir`, each atomically."""
    from superweight._io import atomic_write, write_json

    rows = payload["rows"]
    text = csv_text(rows)
    return [write_json(out_dir / "census.json", payload),
            atomic_write(out_dir / "census.csv", lambda tmp: tmp.write_text(text)),
            census_page(payload, title, command).write(out_dir)]


# --- plots -----------------------------------------------------------------------------------------

def plot_depth(rows: list[dict], path: str | Path) -> Path:
    """The layer of each super weight against the model's depth (number of layers), per architecture."""
    from superweight.census.summary import depth_points
    from superweight.report.figures import new_figure, save_png

    fig, axes = new_figure(1, 1, (6.5, 4.2))
    ax = axes[0][0]
    by_layers = {r["ref"]: r["layers"] for r in rows}
    points = [(r["architecture"], r["layers"], s[0]) for r in rows if r["status"] == "done" and r["layers"]
              for s in r["super_weights"] or []]
    for arch in sorted({p[0] for p in points}):
        ax.scatter([p[1] for p in points if p[0] == arch], [p[2] for p in points if p[0] == arch], label=arch)
    top = max([1, *(v or 0 for v in by_layers.values())])
    ax.plot([0, top], [0, top], ls="--", lw=0.8, color="grey", label="last layer")
    ax.set_xlabel("model depth (decoder layers)")
    ax.set_ylabel("super weight layer")
    ax.set_title(f"Where the super weights are ({len(depth_points(rows))} in {len(rows)} models)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save_png(fig, path)


def plot_magnitude(rows: list[dict], path: str | Path) -> Path:
    """The largest super activation of each model against its number of weights (log–log)."""
    from superweight.report.figures import new_figure, save_png

    fig, axes = new_figure(1, 1, (6.5, 4.2))
    ax = axes[0][0]
    pts = [r for r in rows if r["status"] == "done" and r["super_activation"] and r["params"]]
    for arch in sorted({r["architecture"] for r in pts}):
        sel = [r for r in pts if r["architecture"] == arch]
        ax.scatter([r["params"] for r in sel], [r["super_activation"] for r in sel], label=arch)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("parameters")
    ax.set_ylabel("|super activation|")
    ax.set_title("Super activation magnitude against model size")
    ax.grid(alpha=0.3)
    if pts:
        ax.legend(fontsize=8)
    return save_png(fig, path)


def census_section(payload: dict, how: str | None = None) -> Section:
    """The census as one report section: the table, the two cross-model plots, how it ran."""
    from superweight.report.page import _png

    rows = payload["rows"]
    done = [r for r in rows if r["status"] == "done"]
    facts = [("models", len(rows)), ("done", len(done)), ("failed", len(rows) - len(done)),
             ("ran now / already in the store", f"{len(payload['ran'])} / {len(payload['skipped'])}"),
             ("engine", f"{payload['engine']}" + (f", {payload['workers']} worker(s)" if payload["engine"] == "local"
                                                  else "")),
             ("settings key", payload["settings_key"]),
             ("verification", "on (threshold %g)" % payload["settings"]["verify_threshold"]
              if payload["settings"]["verify_threshold"] else "off: candidates only"),
             ("prompts", len(payload["settings"]["prompts"]))]
    blocks = [Facts(facts), census_table(rows)]
    blocks.append(_png(lambda p: plot_depth(rows, p), "Super weight layer against model depth"))
    blocks.append(_png(lambda p: plot_magnitude(rows, p), "Super activation magnitude against model size"))
    return Section("Census", blocks, how)


def census_page(payload: dict, title: str, command: str | None = None) -> Page:
    from superweight import __version__

    generated = time.strftime("%Y-%m-%d %H:%M %Z")
    how = command or "superweight census (library call)"
    sections = [census_section(payload, how),
                Section("Reproduce", [Text("Each model's full result (the same JSON as `superweight detect "
                                           "--json`) is in results/; this census was made by:"), Code(how)])]
    return Page(title, f"{len(payload['rows'])} models · generated {generated} by superweight {__version__}",
                sections)


# --- progress ----------------------------------------------------------------------------------------

class CensusProgress:
    """`[3/8] done org/model (12 s) · about 40 s left` on stderr, one line per finished model; the time
    left is the wall time per finished model so far (parallel workers included) times those left."""

    def __init__(self, console, clock=time.monotonic):
        self.console, self.clock = console, clock
        self.total = self.finished = 0
        self.start = clock()

    def on_event(self, event) -> None:
        """`run_census`'s `on_event` (`superweight.events.Event`)."""
        from superweight.report.progress import duration

        if event.kind == "skip":
            self.console.print(f"already in the store ({event.result['status']}): {event.name}", markup=False)
        elif event.kind == "plan":
            self.total, self.start = event.total, self.clock()
            self.console.print(f"{self.total} model(s) to run", markup=False)
        elif event.kind == "model" and event.ended:
            entry = event.result
            self.finished += 1
            elapsed = self.clock() - self.start
            left = elapsed / self.finished * (self.total - self.finished)
            what = "done" if entry["status"] == "done" else f"FAILED ({entry['error']})"
            secs = f" ({duration(entry['seconds'])})" if entry.get("seconds") is not None else ""
            self.console.print(f"[{self.finished}/{self.total}] {what}: {event.name}{secs} · "
                               f"about {duration(left)} left", markup=False)

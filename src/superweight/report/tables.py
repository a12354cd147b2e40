"""Every result as tables a person reads: built once, drawn in the terminal (rich) or as markdown.

Each `*_tables(result)` function turns one library result into plain `Table`s (strings in cells, no
markup), so the terminal and the markdown file always show the same figures; `to_rich` and
`to_markdown` only draw them. Numbers are formatted by what they are (`Metric`): accuracies in
percent as in the paper, perplexities with four significant figures.

>>> t = Table("demo", [Column("set"), Column("ppl", "right")], [["wiki", "16.57"]], notes=["a note"])
>>> print(to_markdown([t]))
**demo**
<BLANKLINE>
| set | ppl |
|---|---:|
| wiki | 16.57 |
<BLANKLINE>
a note
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Iterable, Sequence

from superweight.evaluate.metrics import Metric


@dataclass(frozen=True)
class Column:
    name: str
    justify: str = "left"  # "left" | "right"
    no_wrap: bool = False


@dataclass
class Table:
    """A titled table of strings; `sections` are row indices after which a rule is drawn."""

    title: str
    columns: list[Column]
    rows: list[list[str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # lines shown after the table
    sections: set[int] = field(default_factory=set)


# --- drawing -----------------------------------------------------------------------------------

def to_rich(t: Table):
    """A rich table (the title and notes are printed by `show`, unwrapped)."""
    from rich.table import Table as RichTable

    out = RichTable()
    for i, c in enumerate(t.columns):
        out.add_column(c.name, justify=c.justify, no_wrap=c.no_wrap or i == 0)  # type: ignore[arg-type]
    for i, row in enumerate(t.rows):
        out.add_row(*row, end_section=i in t.sections)
    return out


def show(console, tables: Iterable[Table]) -> None:
    """Print tables and their notes on a rich console (no markup is read from cells)."""
    for t in tables:
        if t.title:
            console.print(t.title, markup=False, highlight=False, style="bold")
        if t.columns:
            console.print(to_rich(t), markup=False)
        for note in t.notes:
            console.print(note, markup=False, highlight=False)


def _md(text: str) -> str:
    """Plain text in markdown: `*` and `|` taken literally ("wiki* ppl", a note starting with `*`)."""
    return text.replace("*", "\\*").replace("|", "\\|")


def to_markdown(tables: Iterable[Table]) -> str:
    parts = []
    for t in tables:
        lines = [f"**{_md(t.title)}**", ""] if t.title else []
        if t.columns:
            lines.append("| " + " | ".join(_md(c.name) for c in t.columns) + " |")
            lines.append("|" + "|".join("---:" if c.justify == "right" else "---" for c in t.columns) + "|")
            lines += ["| " + " | ".join(_md(cell) for cell in row) + " |" for row in t.rows]
        if t.notes:
            lines += ([""] if t.columns else []) + "\n\n".join(_md(n) for n in t.notes).split("\n")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


# --- numbers -------------------------------------------------------------------------------------

def num(v, fmt: str = ".4g") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    return format(v, fmt) if isinstance(v, (int, float)) else str(v)


def value(metric: Metric, v) -> str:
    """A summary figure as the paper prints it: accuracy in percent, perplexity to 4 figures."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "—"
    if not isinstance(v, (int, float)):
        return str(v)
    if metric.is_accuracy:
        return f"{100 * v:.2f}"
    if metric.is_perplexity:
        return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.3g}"
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def ratio(r) -> str:
    return "—" if r is None else f"{r:.3g}×"


def summary_table(title: str, first: str, rows: Sequence[tuple[str, dict | None, str]],
                  metrics: Sequence[Metric], notes: Sequence[str] = ()) -> Table:
    """One line per (label, summary, note); a row that did not run shows its note."""
    t = Table(title, [Column(first)] + [Column(m.header, "right") for m in metrics], notes=list(notes))
    for label, summary, note in rows:
        if summary is None:
            cells = ([f"— ({note})" if note else "—"] + ["—"] * (len(metrics) - 1)) if metrics else []
        else:
            cells = [value(m, summary.get(m.name)) for m in metrics]
        t.rows.append([label] + cells)
    return t


def stand_in_note(metrics: Iterable[Metric]) -> list[str]:
    from superweight.evaluate.metrics import STAND_IN, STAND_IN_MARK

    if any(STAND_IN in m.label for m in metrics):
        return [f"{STAND_IN_MARK} {STAND_IN}: the fetched Wikipedia / web texts stand in for WikiText-2 / C4; "
                "their perplexities compare models and edits, not published figures (--hub reads the standard sets)."]
    return []


# --- evaluation ----------------------------------------------------------------------------------

def eval_tables(result, ref: str) -> list[Table]:
    """`superweight eval`: every lm-eval metric of each task with its stderr, the average, each text."""
    hub = bool(result.config.get("hub"))
    t = Table(f"{ref}: evaluation" + (" (hub data)" if hub else ""),
              [Column("set"), Column("metric"), Column("value", "right"), Column("± stderr", "right"),
               Column("n", "right")])
    for name, r in result.zero_shot.items():
        for metric, v in r.metrics.items():
            se = r.stderr.get(metric)
            t.rows.append([name, metric, f"{v:.4f}", f"{se:.4f}" if se is not None else "", str(r.items)])
    summary = result.summary()
    if "average" in summary:
        t.rows.append(["average", "acc", f"{summary['average']:.4f}", "", str(len(result.zero_shot))])
        t.sections.add(len(t.rows) - 1)
    labels = {m.name: m.header for m in result.metrics()}
    from superweight.evaluate.metrics import text_key

    for name, r in result.perplexity.items():
        label = labels.get(f"{text_key(name)}_ppl", name).replace(" ppl", "", 1)  # "wiki*"
        t.rows.append([label, "perplexity", f"{r.ppl:.5g}", "", f"{r.tokens:,} tok"])
    t.notes += stand_in_note(result.metrics())
    return [t]


# --- ablations -----------------------------------------------------------------------------------

def super_weight_line(selection) -> str:
    """'Super weights (detection): (11, 507, 1229), (11, 507, 1487)' for a `Selection`."""
    sws = selection.super_weights
    return f"Super weights ({selection.source}): " + (", ".join(s.label() for s in sws) if sws else "none")


def ablation_tables(result, title: str = "Super weight ablation (Table 1)") -> list[Table]:
    metrics = result.columns()
    rows = [(r.condition, r.summary, r.note) for r in result.rows]
    notes = stand_in_note(metrics)
    return [summary_table(title, "Condition", rows, metrics, notes)]


def scale_tables(result, title: str = "Scaling the super weights (Figure 6)") -> list[Table]:
    metrics = result.columns()
    best = result.best
    rows = [(f"× {f:g}" + (" (original)" if f == 1 else "") + (" (best)" if f == best else ""), s, "")
            for f, s in zip(result.factors, result.summaries)]
    by = next((m.header for m in metrics if m.name == result.best_by), result.best_by)
    notes = [f"Best factor by {by}: × {best:g}"] + stand_in_note(metrics)
    return [summary_table(title, "Scale", rows, metrics, notes)]


def stopword_tables(result) -> list[Table]:
    intro = Table("", [], notes=[f"Average next-token probability over {result.passages} LAMBADA passages "
                                 "(last word removed), model as it is vs super weights pruned."])
    groups = Table("Token groups", [Column("group"), Column("tokens", "right"), Column("original", "right"),
                                    Column("pruned", "right"), Column("ratio", "right")])
    for name, g in result.groups.items():
        groups.rows.append([name, str(g["tokens"]), f"{g['original']:.4f}", f"{g['pruned']:.4f}",
                            ratio(g["ratio"])])

    def shifts(title, items):
        t = Table(title, [Column("token"), Column("original", "right"), Column("pruned", "right"),
                          Column("ratio", "right")])
        t.rows = [[repr(s.token), f"{s.original:.4g}", f"{s.pruned:.4g}", ratio(s.ratio)] for s in items]
        return t
    return [intro, groups, shifts("The paper's examples", result.named), shifts("Rising most", result.rising),
            shifts("Falling most", result.falling)]


# --- quantization --------------------------------------------------------------------------------

def sweep_tables(result, title: str) -> list[Table]:
    """Figure 7 / Table 3 / one quantization: one row per method and setting, with what it did
    (weights: relative error, entries clipped, super weights kept; W8A8: linears with protected
    entries, linears smoothed), then Table 3's shares when the W8A8 rows are there."""
    metrics = result.metrics()
    weights = any(r.kind == "weight" for r in result.rows)
    w8a8 = any(r.kind == "w8a8" for r in result.rows)
    cols = [Column("method"), Column("bits", "right")] + ([Column("block", "right")] if weights else [])
    cols += [Column(m.header, "right") for m in metrics]
    cols += [Column(c, "right") for c in ("rel. error", "clipped", "kept")] if weights else []
    cols += [Column(c, "right") for c in ("protected", "smoothed")] if w8a8 else []
    t = Table(title, cols + [Column("s", "right")])
    for r in result.rows:
        if "error" in r.metrics:
            figures = [r.metrics["error"]] + [""] * (len(metrics) - 1) if metrics else []
        else:
            figures = [value(m, r.metrics.get(m.name)) for m in metrics]
        cells = [r.label, num(r.bits, "d")] + ([num(r.block, "d")] if weights else []) + figures
        if weights:
            q = r.quant if r.kind == "weight" else {}
            cells += [num(q.get("mean_rel_error"), ".4f"), num(q.get("clipped"), "d"), num(q.get("kept"), "d")]
        if w8a8:
            plan = r.quant.get("plan", {}) if r.kind == "w8a8" else {}
            cells += [num(len(plan["protected"]) if "protected" in plan else None, "d"),
                      num(plan.get("smoothed"), "d")]
        t.rows.append(cells + [f"{r.seconds:.0f}"])
    notes = stand_in_note(metrics)
    by_name = {m.name: m for m in metrics}
    for key, v in result.share_kept().items():
        m = by_name.get(key.removeprefix("log:"))
        what = (f"log {m.header}" if key.startswith("log:") else m.header) if m else key
        notes.append(f"share of SmoothQuant's {what} improvement kept by the data-free method: "
                     + ("n/a" if v is None else f"{100 * v:.1f}%"))
    t.notes = notes
    return [t]


def check_tables(rows, original: str, other: str, survive_ratio: float) -> list[Table]:
    t = Table(f"super weights of {original} in {other}",
              [Column(c, "right") for c in ("super weight", "original", "other", "rel. error",
                                            "input spike (orig)", "input spike (other)", "activation (orig)",
                                            "activation (other)", "ratio", "survives")])
    for r in rows:
        e = f", {r.expert}" if r.expert is not None else ""
        t.rows.append([f"({r.layer}, {r.row}, {r.col}{e})", f"{r.original:.6g}", f"{r.other:.6g}",
                       f"{r.rel_error:.2%}", f"{r.input_original:.5g}", f"{r.input_other:.5g}",
                       f"{r.activation_original:.5g}", f"{r.activation_other:.5g}",
                       f"{r.activation_ratio:.3f}", "yes" if r.survives else "NO"])
    lost = [r for r in rows if not r.survives]
    t.notes.append(f"{len(rows) - len(lost)} of {len(rows)} super activation(s) survive (at least "
                   f"{survive_ratio:.0%} of the original's, same sign).")
    return [t]


# --- fine-tuning ---------------------------------------------------------------------------------

def _rel(v: float) -> str:
    return "0" if v == 0 else f"{v:.2e}"


def _method_line(c) -> str:
    if c.method == "lora":
        kinds = ",".join(c.lora.kinds) if c.lora.kinds else "every decoder linear"
        return f"lora (r {c.lora.r}, alpha {c.lora.alpha:g}, dropout {c.lora.dropout:g}; {kinds}; merged)"
    if c.method == "smt":
        s = c.smt
        kinds = ",".join(s.kinds) if s.kinds else "every decoder linear"
        return (f"smt (blocks of {s.block}×{s.block}, budget {s.budget:.3g} of the eligible parameters, "
                f"{s.warmup_steps} warm-up batches; {kinds}"
                f"{'; super weight blocks excluded' if s.exclude_super else ''})")
    return "full (every parameter)"


def _guard_line(c) -> str:
    if c.guard == "clip":
        return (f"clip (each super weight within ±{c.max_step_rel:g} per step, ±{c.max_total_rel:g} in total, "
                "of |original|)")
    if c.guard == "none":
        return "none (monitored only)"
    return "freeze (gradients masked, exact values restored after every step)"


def finetune_tables(result, ref: str) -> list[Table]:
    """`superweight finetune`: what was trained and how, the super weights and the super activation
    before and after (the guard's drift report), where SMT's blocks went, and `check` ORIGINAL vs TUNED."""
    from superweight.quantize.check import SURVIVE_RATIO

    c, tr = result.config, result.train
    summary = Table(f"Fine-tuning {ref}", [Column("setting"), Column("value")])
    rows = [("data", f"{result.data or 'given documents'}: {tr.blocks:,} blocks of {c.seqlen} tokens"),
            ("method", _method_line(c)), ("guard", _guard_line(c)),
            ("steps", f"{tr.steps} × {c.batch_size} blocks × {c.grad_accum} accumulated × {c.seqlen} tokens "
                      f"= {tr.tokens_per_step:,} tokens a step"),
            ("optimizer", f"AdamW (the Trainer's), lr {c.lr:g}, weight decay {c.weight_decay:g}, "
                          f"{c.lr_scheduler} schedule, gradient clipping {c.max_grad_norm:g}"),
            ("trainable", f"{tr.trainable_params:,} of {tr.total_params:,} parameters "
                          f"({tr.trainable_params / tr.total_params:.2%})" if tr.total_params else "—"),
            ("loss", f"{tr.losses[0]:.4f} → {tr.losses[-1]:.4f}" if tr.losses else "—"),
            ("time", f"{tr.seconds:.1f} s training, {tr.median_step_seconds:.2f} s a step (median)"
                     + (f", SMT warm-up {tr.warmup_seconds:.1f} s" if c.method == "smt" else "")),
            ("peak RSS", f"{tr.peak_rss_mb:,.0f} MB (the whole process so far)"),
            ("checkpoint", result.out or "not saved")]
    summary.rows = [[k, v] for k, v in rows]
    tables = [summary]

    drift = result.drift
    heads = ("original", "final", "rel. change", "largest", "bit-identical")
    weights = Table(f"Super weights during fine-tuning (guard: {c.guard})",
                    [Column("super weight", "right")] + [Column(h, "right") for h in heads])
    for w in drift.weight_rows():
        weights.rows.append([w["super_weight"], f"{w['original']:.6g}", f"{w['final']:.6g}", _rel(w["rel_change"]),
                             _rel(w["max_rel_change"]), "yes" if w["bit_identical"] else "no"])
    if not weights.rows:
        weights.notes.append("no super weights were given or detected: nothing guarded or watched")
    tables.append(weights)
    acts = drift.activation_rows()
    if acts:
        t = Table(f"Super activation on the probe prompt (every {drift.config.every} steps)",
                  [Column("layer, channel, position"), Column("before", "right"), Column("after", "right"),
                   Column("ratio", "right")])
        t.rows = [[f"{a['layer']}, {a['row']}, {a['position']}"
                   + (f" (expert {a['expert']})" if a["expert"] is not None else ""),
                   f"{a['original']:.5g}", f"{a['final']:.5g}", f"{a['ratio']:.3f}"] for a in acts]
        tables.append(t)
    (tables[-1] if acts else weights).notes += drift_notes(drift)
    if result.smt is not None:
        tables.append(smt_table(result.smt))
    if result.check is not None:
        tables += check_tables(result.check, f"{ref} (original)", f"{result.out or 'the tuned model'} (tuned)",
                               SURVIVE_RATIO)
    if result.notes:
        tables.append(Table("", [], notes=list(result.notes)))
    return tables


def drift_notes(drift) -> list[str]:
    """The guard's flags, one line per flagged super weight or activation: from which step, how far."""
    cfg = drift.config
    if not drift.flags:
        return [f"No drift flagged (thresholds: super weights {cfg.weight_drift:g}, super activations "
                f"{cfg.activation_drift:.0%} relative change)."]
    seen: dict[tuple[str, str], list] = {}
    for f in drift.flags:
        seen.setdefault((f.what, f.label), []).append(f)
    lines = []
    for (what, label), flags in seen.items():
        limit = cfg.weight_drift if what == "weight" else cfg.activation_drift
        worst = max(flags, key=lambda f: f.rel_change)
        lines.append(f"Flagged: super {what} {label} moved more than {limit:g} of its original from step "
                     f"{flags[0].step} on (largest {worst.rel_change:.3g} at step {worst.step}, {worst.phase}).")
    return lines


def smt_table(plan) -> Table:
    """SMT's chosen blocks per module kind × layer (the layers that got any), as in the SMT paper."""
    p = plan.placement()
    used = [j for j, _ in enumerate(p["layers"]) if any(row[j] for row in p["blocks"])]
    b = plan.config.block
    t = Table(f"SMT: where the {len(plan.blocks)} chosen blocks of {b}×{b} went (blocks per module kind × layer)",
              [Column("kind")] + [Column(f"L{p['layers'][j]}", "right") for j in used] + [Column("total", "right")])
    for kind, row in zip(p["kinds"], p["blocks"]):
        t.rows.append([kind] + [str(row[j]) if row[j] else "" for j in used] + [str(sum(row))])
    share = plan.trainable_params / plan.eligible_params if plan.eligible_params else 0.0
    t.notes.append(f"{plan.trainable_params:,} parameters trained = {share:.2%} of the {plan.eligible_params:,} "
                   f"eligible ({plan.candidates:,} blocks scored); blocks holding a super weight: "
                   f"{len(plan.holding_super)} chosen" + (f", {len(plan.excluded)} excluded" if plan.excluded else ""))
    return t


# --- catalog and data ----------------------------------------------------------------------------

def catalog_tables(entries) -> list[Table]:
    t = Table("Known super weights (layer, row, col) into down_proj.weight[row, col]",
              [Column("model"), Column("super weights"), Column("source"), Column("from")])
    for e in entries:
        coords = ", ".join(f"({l}, {r}, {c})" for l, r, c in e.super_weights)
        if e.alternatives:
            coords += " · alt " + ", ".join(f"({l}, {r}, {c})" for l, r, c in e.alternatives)
        t.rows.append([e.model, coords, e.source + (f" — {e.notes}" if e.notes else ""), e.origin])
    return [t]


def data_tables(rows, root, fetch_command: str) -> list[Table]:
    t = Table(f"Evaluation and training data ({root})",
              [Column(c) for c in ("name", "kind", "split", "fetched", "offline source", "hub (online)", "what")])
    for r in rows:
        t.rows.append([r["name"], "text" if r["kind"] == "text" else "zero-shot", r["split"],
                       "yes" if r["fetched"] else "no", r["package"], r["hub"], r["description"]])
    t.notes.append("Texts: perplexity (`--ppl`) and fine-tuning (`finetune --data`); zero-shot: `--tasks`.")
    if not all(r["fetched"] for r in rows):
        t.notes.append(f"Fetch the missing ones with `{fetch_command}`.")
    return [t]


def fetch_tables(entries, root) -> list[Table]:
    t = Table("Fetched", [Column("name"), Column("file"), Column("sha256"), Column("from")],
              notes=[f"Data in {root}"])
    t.rows = [[e["name"], e["file"], e["sha256"][:16] + "…", e["package"]] for e in entries]
    return [t]


GGUF_SCORE_COLUMNS = (("ppl", "ppl", ".4g"), ("ppl_reference", "ppl (F32)", ".4g"), ("ppl_ratio", "ppl ratio", ".4f"),
                      ("kld_mean", "mean KLD", ".4g"), ("kld_p99", "KLD p99", ".4g"),
                      ("same_top", "same top", ".2%"))


def gguf_score_cells(score: dict) -> list[str]:
    """One scored row's figures (perplexity, its ratio to the F32 file, KL divergence, same top token)."""
    values = {**score, "kld_p99": score.get("kld_percentiles", {}).get("99")}
    return [num(values.get(key), fmt) if fmt != ".2%" or values.get(key) is None else f"{values[key]:.2%}"
            for key, _, fmt in GGUF_SCORE_COLUMNS]


def gguf_tables(run, ref: str) -> list[Table]:
    """A llama.cpp quantization: what was written and protected, and its scores against the F32 file."""
    r = run.result
    s = r.summary()
    what = Table(f"{r.config['type']} GGUF of {ref} (llama.cpp)",
                 [Column("file"), Column("MiB", "right"), Column("bits/weight", "right"), Column("tensor types"),
                  Column("protected")])
    types = ", ".join(f"{n} {t}" for t, n in sorted(s["tensor_types"].items(), key=lambda kv: -kv[1]))
    what.rows.append([r.path, num(s["mib"], ".2f"), num(s["bits_per_weight"], ".3f"), types,
                      ", ".join(s["protected"]) or "none"])
    what.notes = [f"{name}: asked {f['asked']}, llama.cpp wrote {f['got']}" for name, f in s["fallbacks"].items()]
    tables = [what]
    if run.scores:
        tables += llamacpp_eval_tables(run.scores)
    return tables


def llamacpp_eval_tables(result) -> list[Table]:
    """`eval --runtime llama.cpp`: per text, perplexity (and against a reference, the KL divergence)."""
    title = f"{result.model} in llama.cpp" + (f" against {result.reference}" if result.reference else "")
    if result.reference:
        t = Table(title, [Column("text")] + [Column(h.replace("F32", "reference"), "right")
                                              for _, h, _ in GGUF_SCORE_COLUMNS] + [Column("tokens", "right")])
        for text, r in result.texts.items():
            t.rows.append([text] + gguf_score_cells(r) + [num(r["tokens"], "d")])
    else:
        t = Table(title, [Column("text"), Column("ppl", "right"), Column("±", "right"), Column("tokens", "right")])
        for text, r in result.texts.items():
            t.rows.append([text, num(r["ppl"], ".4f"), num(r["ppl_stderr"], ".4f"), num(r["tokens"], "d")])
    t.notes = [f"{result.scoring} (windows of {result.seqlen} tokens)"]
    return [t]

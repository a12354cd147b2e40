"""The report page: one model's massive activations, super weights, trace, catalog and results.

`report_page(overview)` turns a `superweight.overview.Overview` into an `html.Page`: the same tables
the terminal shows (`detect_tables`, `tables`), the paper's figures drawn from the same data, and
under each section the command that made it. Figures are drawn into a private temporary folder and
embedded, so the page is one self-contained file.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Callable

from superweight.report.html import Code, Facts, Figure, Page, Section, Text


def _png(draw: Callable[[Path], object], caption: str) -> Figure:
    """Draw a figure with `draw(path)` into a temporary file and embed its bytes."""
    with tempfile.TemporaryDirectory(prefix="superweight-fig-") as tmp:
        path = Path(tmp) / "figure.png"
        draw(path)
        return Figure(path.read_bytes(), caption)


def _how(payload: dict, fallback: str) -> str:
    return payload.get("command") or fallback


def _short_hash(model: dict) -> str:
    h = model.get("weights_sha256") or ""
    return h[:16] + "…" if h else "–"


def model_section(model: dict, generated: str) -> Section:
    memory = model.get("memory") or {}
    placement = "whole model in memory"
    if memory.get("offloaded"):
        layers = (memory.get("device_map") or {}).get("layers", {})
        placement = "; ".join(f"{dev}: layers {d.get('which')}" for dev, d in layers.items()) or "offloaded"
    facts = [("reference", model.get("ref")), ("kind", model.get("kind")), ("source", model.get("source")),
             ("hub id", model.get("model_id") or "–"), ("architecture", model.get("model_type")),
             ("decoder layers", model.get("num_layers")), ("dtype", model.get("dtype")),
             ("device", model.get("device")), ("weights sha256", _short_hash(model)),
             ("memory budget", memory.get("budget") or "none"), ("placement", placement),
             ("generated", generated)]
    return Section("Model", [Facts(facts)])


def detection_sections(overview, how: str) -> list[Section]:
    from superweight.report.detect_plots import plot_down_proj, plot_residual
    from superweight.report.detect_tables import detection_tables, trace_tables

    run, t, model = overview.detection, overview.trace, overview.model
    result = run.result
    words = Text("Words: a massive activation is seen in the residual stream; a super weight candidate "
                 "is a weight that makes one (or a down projection spike); a super weight is a candidate "
                 "whose removal verifiably damages the model. A massive activation is called a super "
                 "activation only when a verified super weight makes it.", tone="note")
    found = Section("Massive activations and super weights", [words, *detection_tables(model, run)], how)
    ref = model.get("ref", "model")
    fig3 = _png(lambda p: plot_down_proj(result.layer_stats[0], f"{ref}: down_proj spikes per layer", p,
                                         sorted({s.layer for s in result.early})),
                "Figure 3: the largest |input| and |output| of each layer's down projection (log scale); "
                "dashed lines mark the layers of the super weights.")
    figures = Section("Figure 3: down projection spikes per layer", [fig3], how)
    blocks: list = []
    if t.original:
        channel = t.activation.channel if t.activation else None
        second = f" and with {t.zeroed_label.replace('its weights', 'the weights that make it')}" if t.pruned else ""
        blocks.append(_png(lambda p: plot_residual(t.original, t.pruned, f"{ref}: residual stream", p, channel,
                                                   t.zeroed_label),
                           f"Figure 4: the residual stream's largest |value| after each layer, as loaded{second}."))
    blocks += trace_tables(t)
    trace = Section("Figure 4: the massive activation through the residual stream", blocks, how)
    out = [found, figures, trace, catalog_section(run.comparison, how)]
    if getattr(run, "experts", None) is not None:  # a mixture of experts: the super experts' heatmap
        from superweight.report.moe import expert_heatmap_section

        out.insert(2, expert_heatmap_section(run.experts, ref, how, _png))
    return out


def catalog_section(comparison, how: str) -> Section:
    entry = comparison.entry
    if entry is None:
        return Section("Catalog", [Text("This model has no catalog entry (the catalog is matched on the exact "
                                        "hub id; `superweight catalog add` or `detect --save-catalog` adds one).")],
                       how)
    fmt = lambda coords: ", ".join(f"({', '.join(map(str, c))})" for c in coords) or "none"  # noqa: E731
    facts = [("verdict", comparison.verdict), ("entry", entry.model), ("source", entry.source),
             ("catalogued", fmt(entry.super_weights)), ("found and catalogued", fmt(comparison.agree)),
             ("catalogued, not found", fmt(comparison.missing)), ("found, not catalogued", fmt(comparison.new))]
    return Section("Catalog", [Facts(facts)], how)


# --- result files ------------------------------------------------------------------------------

def result_section(payload: dict) -> Section:
    """One section for a result file (`superweight.overview.read_result`), by its kind."""
    kind = payload["kind"]
    build = _BUILDERS[kind]
    title, blocks = build(payload)
    if payload.get("source_file"):
        blocks.append(Text(f"From {payload['source_file']}."))
    return Section(title, blocks, _how(payload, f"superweight {kind} (the command line is not in the file)"))


def _ablate(p: dict):
    from superweight.ablation import AblationResult
    from superweight.report.ablation_plots import plot_ablation
    from superweight.report.tables import ablation_tables

    r = AblationResult.from_dict(p)
    title = "Table 1: pruning the super weights"
    blocks: list = [*ablation_tables(r, title)]
    if any(row.summary for row in r.rows):
        blocks.append(_png(lambda path: plot_ablation(r, title, path),
                           "Average accuracy and perplexity (log scale) per condition."))
    return title, blocks


def _stopwords(p: dict):
    from superweight.ablation import StopwordResult
    from superweight.report.ablation_plots import plot_stopwords
    from superweight.report.tables import stopword_tables

    r = StopwordResult.from_dict(p)
    title = "Figure 5: next-token probabilities with the super weights pruned"
    return title, [*stopword_tables(r), _png(lambda path: plot_stopwords(r, title, path),
                                             "Named tokens and the tokens rising most, original vs pruned.")]


def _scale(p: dict):
    from superweight.ablation import ScaleResult
    from superweight.report.ablation_plots import plot_scale
    from superweight.report.tables import scale_tables

    r = ScaleResult.from_dict(p)
    title = "Figure 6: scaling the super weights"
    return title, [*scale_tables(r, title), _png(lambda path: plot_scale(r, title, path),
                                                 "Accuracy and perplexity against the scaling factor.")]


def _quantize(p: dict):
    from superweight.evaluate.metrics import AVERAGE_KEY
    from superweight.quantize.sweep import W8A8, WEIGHT, QuantResult
    from superweight.report.quantize_plots import plot_sweep
    from superweight.report.tables import sweep_tables

    r = QuantResult.from_dict(p)
    kinds = {row.kind for row in r.rows}
    blocks_seen = {row.block for row in r.rows if row.kind == WEIGHT}
    if W8A8 in kinds:
        title = "Table 3: W8A8 with the super activations held out"
    elif len(blocks_seen) > 1:
        title = "Figure 7: round-to-nearest quantization against the block size"
    else:
        title = "Quantization"
    blocks: list = [*sweep_tables(r, title)]
    if W8A8 not in kinds and len(blocks_seen) > 1:
        shown = [m for m in r.metrics() if m.is_perplexity or m.name == AVERAGE_KEY] or r.metrics()
        blocks += [_png(lambda path, m=m: plot_sweep(r.rows, m, path, f"{m.label} vs block size"),
                        f"{m.label} against the block size, per method (per-task accuracies are in the table)")
                   for m in shown]
    return title, blocks


def _eval(p: dict):
    from superweight.evaluate.metrics import Metric
    from superweight.report.tables import stand_in_note, summary_table

    metrics = [Metric.from_dict(m) for m in p.get("metrics", [])]
    table = summary_table("Evaluation", "model", [(p.get("model", {}).get("ref", "model"), p.get("summary", {}), "")],
                          metrics, stand_in_note(metrics))
    return "Evaluation", [table]


def _check(p: dict):
    from superweight.quantize.check import CheckRow
    from superweight.report.tables import check_tables

    rows = [CheckRow.from_dict(r) for r in p.get("rows", [])]
    original, other = (p.get(k, {}).get("ref", k) for k in ("original", "other"))
    return f"Check: the super weights of {original} in {other}", check_tables(rows, original, other,
                                                                              p.get("survive_ratio", 0.5))


def _finetune(p: dict):
    from superweight.quantize.check import SURVIVE_RATIO, CheckRow
    from superweight.report.finetune_plots import plot_drift, plot_smt_placement
    from superweight.report.tables import Column, Table, check_tables

    config, drift = p.get("config", {}), p.get("drift") or {}
    facts = [("data", p.get("data")), *((k, config.get(k)) for k in
                                        ("method", "guard", "steps", "lr", "weight_decay", "seqlen", "batch_size"))]
    blocks: list = [Facts([(k, v) for k, v in facts if v is not None])]
    weights = Table(f"Super weights during fine-tuning (guard: {config.get('guard')})",
                    [Column("super weight")] + [Column(h, "right") for h in
                                                ("original", "final", "rel. change", "bit-identical")])
    weights.rows = [[w["super_weight"], f"{w['original']:.6g}", f"{w['final']:.6g}", f"{w['rel_change']:.3g}",
                     "yes" if w["bit_identical"] else "no"] for w in drift.get("weights", [])]
    acts = Table("Super activation on the probe prompt", [Column("layer, channel, position")]
                 + [Column(h, "right") for h in ("before", "after", "ratio")])
    acts.rows = [[f"{a['layer']}, {a['row']}, {a['position']}", f"{a['original']:.5g}", f"{a['final']:.5g}",
                  f"{a['ratio']:.3f}"] for a in drift.get("activations", [])]
    blocks += [t for t in (weights, acts) if t.rows]
    if drift.get("snapshots"):
        blocks.append(_png(lambda path: plot_drift(drift, path), "The super weights and the super activation "
                                                                 "during fine-tuning."))
    if (p.get("smt") or {}).get("placement"):
        blocks.append(_png(lambda path: plot_smt_placement(p["smt"]["placement"], path),
                           "Where SMT's chosen blocks fall: module kind × layer."))
    if p.get("check"):
        blocks += check_tables([CheckRow.from_dict(r) for r in p["check"]], "original", p.get("out") or "tuned",
                               p.get("survive_ratio", SURVIVE_RATIO))
    return f"Fine-tuning ({config.get('method')}, guard {config.get('guard')})", blocks


def _census(p: dict):
    from superweight.report.census import census_section

    return f"Census of {len(p['rows'])} models", census_section(p).blocks


_BUILDERS = {"ablate": _ablate, "stopwords": _stopwords, "scale": _scale, "quantize": _quantize, "eval": _eval,
             "check": _check, "finetune": _finetune, "census": _census}


def report_page(overview, command: str | None = None) -> Page:
    """The whole page for an `Overview`; `command` is the command line that made the report."""
    from superweight import __version__

    model = overview.model
    generated = time.strftime("%Y-%m-%d %H:%M %Z")
    how = command or "superweight report (library call)"
    sections = [model_section(model, generated), *detection_sections(overview, how)]
    sections += [result_section(p) for p in overview.results]
    sections.append(Section("Reproduce", [Text("Every section above says which command made it; this "
                                               "report was made by:"), Code(how)]))
    subtitle = (f"{model.get('model_type')}, {model.get('num_layers')} layers, {model.get('dtype')} · "
                f"generated {generated} by superweight {__version__}")
    return Page(f"superweight report: {model.get('ref')}", subtitle, sections)


def write_report(overview, out_dir: str | Path, command: str | None = None) -> Path:
    """Write `out_dir/index.html` (self-contained) and return its path."""
    return report_page(overview, command).write(out_dir)


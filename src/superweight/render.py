"""Terminal rendering of detection and trace results with rich tables."""

from __future__ import annotations

from rich.table import Table


def _num(v, fmt: str = ".4g") -> str:
    return "–" if v is None else format(v, fmt)


def super_weight_table(title: str, sws, lm, show_prompts: int = 0, verified: bool = False) -> Table:
    norm = any(s.norm_output is not None for s in sws)
    t = Table(title=title, title_justify="left")
    cols = ["(layer, row, col)", "weight", "input X", "output Y", "token@pos", "dominance",
            "Y without", "|w| rank", "round"]
    cols += ["after norm", "gain/median"] if norm else []
    cols += ["prompts"] if show_prompts > 1 else []
    cols += ["ppl× alone", "ppl× given others", "verdict"] if verified else []
    for c in cols:
        t.add_column(c, justify="left" if c in ("token@pos", "verdict", "(layer, row, col)") else "right")
    for s in sws:
        cells = [s.label(), _num(s.value), _num(s.input_value), _num(s.output_value),
                 f"{s.token!r}@{s.position}", _num(s.dominance, ".1%"), _num(s.output_without),
                 _num(s.rank, "d"), _num(s.round, "d")]
        if norm:
            ratio = (s.norm_gain / s.norm_gain_median) if s.norm_gain is not None and s.norm_gain_median else None
            cells += [_num(s.norm_output), _num(ratio, ".3g")]
        if show_prompts > 1:
            cells += [f"{s.prompts_found}/{show_prompts}"]
        if verified:
            cells += [_num(s.ppl_ratio, ".3g"), _num(s.ppl_ratio_given_others, ".3g"), s.verdict or "–"]
        t.add_row(*cells)
    return t


def render_detection(out, lm, result, comparison, verification=None) -> None:
    n = len(set(result.prompts))
    out.print(f"[bold]{lm.ref}[/bold] ({lm.model_type}, {lm.view.num_layers} layers, "
              f"{str(lm.dtype).removeprefix('torch.')}) · {n} prompt(s) · "
              f"{len(result.layer_stats)} round(s)")
    verified = verification is not None
    if result.early:
        out.print(super_weight_table("Super weights", result.early, lm, n, verified))
    else:
        out.print("No super weight found with these thresholds "
                  f"(output ≥ max({result.config.min_output:g}, {result.config.output_ratio:g}× median), "
                  f"input ≥ max({result.config.min_input:g}, {result.config.input_ratio:g}× median)).")
    if result.late:
        out.print(super_weight_table(
            f"Late-layer spikes (layer ≥ {result.config.late_fraction:g} of depth; reported apart)",
            result.late, lm, n, verified))
    for a in result.super_activations:
        out.print(f"Super activation: layer {a.layer}, channel {a.channel}, token {a.token!r} "
                  f"(position {a.position}), value {a.value:.4g}")
    _norm_notes(out, result)
    for spike in result.norm_spikes:
        if spike.from_weight:
            continue
        cause = (f"the norm's gain on it is {spike.gain_ratio:.3g}× its median gain — the norm, not a single "
                 "weight, makes it" if spike.gain_ratio is not None and spike.gain_ratio >= 10
                 else "no super weight was found for it and the norm's gain there is ordinary")
        out.print(f"Massive activation after the post-MLP norm of layer {spike.layer}: {spike.value:.4g} "
                  f"on channel {spike.channel} ({spike.ratio:.3g}× the median layer); {cause}.")
    if n > 1:
        stable = [s.label() for s in result.super_weights if s.prompts_found == n]
        out.print(f"Found in all {n} prompts: {', '.join(stable) or 'none'}")
    if verification:
        out.print(f"Verification on {verification.tokens} tokens of the {verification.text_source}: "
                  f"perplexity {verification.ppl:.4g}, with all early super weights zeroed "
                  f"{verification.ppl_all_pruned:.4g} (×{verification.ppl_all_pruned / verification.ppl:.4g})")
    out.print(f"Catalog: {comparison.verdict}"
              + (f" ({comparison.entry.model}; {comparison.entry.source})" if comparison.entry else ""))
    if comparison.entry and comparison.missing:
        out.print(f"  catalogued but not found: {comparison.missing}")
    if comparison.entry and comparison.new:
        out.print(f"  found but not catalogued: {comparison.new}")


def _norm_notes(out, result) -> None:
    """Tell the user whether a post-MLP norm, rather than the weight, makes the activation big."""
    for s in result.early:
        if s.norm_gain is None or s.norm_gain_median in (None, 0):
            continue
        ratio = abs(s.norm_gain) / abs(s.norm_gain_median)
        source = ("the norm's gain more than the weight" if ratio >= 10
                  else "the weight (the norm's gain on this channel is ordinary)")
        out.print(f"Post-MLP norm at layer {s.layer}: output {s.norm_output:.4g} after the norm; gain on "
                  f"channel {s.row} is {ratio:.3g}× the median — the spike there comes from {source}.")


def trace_table(t, lm) -> Table:
    at = t.activation
    title = f"Residual stream per layer — {t.prompt!r}"
    table = Table(title=title, title_justify="left")
    for c in ("layer", "max |h|", "channel", "token (pos)", "h at SA",
              "max |h| SW zeroed", "channel ", "h at SA, SW zeroed"):
        table.add_column(c, justify="right")
    for o, p in zip(t.original, t.pruned):
        tok = t.tokens[o.position] if o.position < len(t.tokens) else "?"
        table.add_row(str(o.layer), _num(abs(o.value)), str(o.channel), f"{tok!r} ({o.position})",
                      _num(o.at_sa) if at else "–", _num(abs(p.value)), str(p.channel),
                      _num(p.at_sa) if at else "–")
    return table

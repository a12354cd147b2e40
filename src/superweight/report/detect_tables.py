"""Detection and trace as tables and sentences: drawn in the terminal (rich) and in the HTML report.

The words follow the project's convention: a *massive activation* is seen (in the residual
stream); a *super weight candidate* is a weight that makes a spike or a massive activation; a
*super weight* is a candidate whose removal verifiably damages the model. A massive activation is
called a *super activation* only when a verified super weight makes it.
"""

from __future__ import annotations

from superweight.records import (ATTENTION, EMBEDDING, EMBEDDING_LAYER, INPUT_FEATURE, MATTERS, MLP, NEEDED,
                                 NORM_GAIN, NOT_NEEDED, SPIKE, SUPER, SUPER_WEIGHT, MassiveActivation)
from superweight.report.tables import Column, Table, show

_LEFT = ("token@pos", "made by", "verdict", "(layer, row, col)")


def _table(title: str, cols: list[str]) -> Table:
    return Table(title, [Column(c, "left" if c in _LEFT else "right") for c in cols])


def _num(v, fmt: str = ".4g") -> str:
    return "–" if v is None else format(v, fmt)


def _layer(layer: int) -> str:
    return "emb" if layer == EMBEDDING_LAYER else str(layer)


def _labels(weights) -> str:
    return ", ".join(w.label() for w in weights)


def _positions(act: MassiveActivation) -> str:
    if len(act.positions) <= 1:
        return f"{act.token!r}@{act.position}"
    return f"{act.token!r}@{act.position} (+{len(act.positions) - 1} more)"


def verified_super_activation(act: MassiveActivation, result) -> bool:
    """A massive activation that a *verified* super weight of its own row makes: the only thing
    the report calls a super activation."""
    return result.is_super_activation(act) and any(
        w.verdict == SUPER and w.row == act.channel for w in result.made_by(act))


def _weights_phrase(weights) -> str:
    """Weights named by what verification said of them: super weights, weights that matter,
    spike-only weights, or candidates (not verified)."""
    if any(w.verdict is None for w in weights):
        return f"super weight candidate{'s' if len(weights) > 1 else ''} {_labels(weights)}"
    phrases = []
    for verdict, one, many in ((SUPER, "super weight {}", "super weights {}"),
                               (MATTERS, "weight {} that matters", "weights {} that matter"),
                               (SPIKE, "weight {}, whose removal does not hurt (spike only)",
                                "weights {}, whose removal does not hurt (spike only)")):
        these = [w for w in weights if w.verdict == verdict]
        if these:
            phrases.append((many if len(these) > 1 else one).format(_labels(these)))
    return ", with ".join(phrases)


def made_by(act: MassiveActivation, result, short: bool = False) -> str:
    """What makes a massive activation, in words (verified wording when verification ran)."""
    o = act.origin
    if o is None:
        return "unknown"
    if o.kind in (SUPER_WEIGHT, INPUT_FEATURE):
        own = [w for w in result.made_by(act) if w.row == act.channel] or o.weights
        if o.kind == SUPER_WEIGHT:
            return _weights_phrase(own)
        rows = ", ".join(map(str, o.rows))
        if short:
            return f"input feature {o.column} → rows {rows}"
        column = sorted(result.made_by(act) or o.weights, key=lambda w: w.row)
        return (f"a few weights of one input feature: column {o.column} of layer {act.first_layer} "
                f"(X = {_num(o.input_value)}) feeds rows {rows} — {_weights_phrase(column)}")
    if o.kind == NORM_GAIN:
        ratio = f"{o.gain_ratio:.3g}× its median gain" if o.gain_ratio else f"gain {_num(o.gain)}"
        if short:
            return f"post-MLP norm gain ({ratio})"
        return (f"the post-MLP norm's gain on channel {act.channel} ({ratio}), not a single weight "
                f"(the MLP output before the norm is {_num(o.mlp_raw)})")
    if o.kind == ATTENTION:
        share = f" ({o.attention_share:.0%} of the layer's increment)" if o.attention_share is not None else ""
        return f"attention{share}"
    if o.kind == EMBEDDING:
        return "the embedding" if short else f"the token embedding of {act.token!r}"
    if o.kind == MLP:
        share = f"its largest few products make {o.weight_share:.0%}" if o.weight_share is not None else ""
        if short:
            return "the MLP, many weights" + (f" ({share})" if share else "")
        return "the MLP, spread over many weights" + (f" ({share} of its output)" if share else "")
    return o.kind


def massive_table(title: str, acts, result, verified: bool, prompts: int) -> Table:
    cols = ["channel", "token@pos", "first layer", "value", "× median", "through layer", "peak", "made by"]
    cols += ["prompts"] if prompts > 1 else []
    cols += ["ppl× ablated", "verdict"] if verified else []
    t = _table(title, cols)
    for a in acts:
        cells = [str(a.channel), _positions(a), _layer(a.first_layer), _num(a.value), _num(a.ratio, ".0f"),
                 _layer(a.last_layer), _num(a.peak), made_by(a, result, short=True)]
        if prompts > 1:
            cells.append(f"{a.prompts_found}/{prompts}")
        if verified:
            cells += [_num(a.ppl_ratio, ".3g"), a.verdict or "–"]
        t.rows.append(cells)
    return t


def super_weight_table(title: str, sws, show_prompts: int = 0, verified: bool = False) -> Table:
    norm = any(s.norm_output is not None for s in sws)
    cols = ["(layer, row, col)", "weight", "input X", "output Y", "token@pos", "dominance",
            "Y without", "|w| rank", "round"]
    cols += ["after norm", "gain/median"] if norm else []
    cols += ["prompts"] if show_prompts > 1 else []
    cols += ["ppl× alone", "ppl× given others", "verdict"] if verified else []
    t = _table(title, cols)
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
        t.rows.append(cells)
    return t


def _sentence(acts: list[MassiveActivation], result) -> str:
    """One line for massive activations that share an origin (a column feeding several rows)."""
    a = acts[0]
    channels = ", ".join(str(x.channel) for x in acts)
    where = ("already in the embedding output" if a.first_layer == EMBEDDING_LAYER
             else f"first after layer {a.first_layer}")
    pos = (f"token {a.token!r} (position {a.position})" if len(a.positions) == 1
           else f"at {len(a.positions)} positions (largest at {a.token!r}, position {a.position})")
    noun = "Super activation" if all(verified_super_activation(x, result) for x in acts) else "Massive activation"
    noun += "s" if len(acts) > 1 else ""
    ch = "channels" if len(acts) > 1 else "channel"
    size = f"{'largest ' if len(acts) > 1 else ''}{_num(a.value)}, {a.ratio:.3g}× the median |h|"
    line = (f"{noun}: {ch} {channels}, {pos}, {where}, carried through layer {a.last_layer} "
            f"({size}) — made by {made_by(a, result)}")
    inc = a.origin.increment if a.origin else None
    if inc is not None and a.value and abs(inc) < 0.5 * abs(a.value):
        line += (f" (layer {a.first_layer} adds {inc / a.value:.0%} of the value; the rest comes in "
                 "from earlier layers, under the massive threshold there)")
    verdicts = {x.verdict for x in acts}
    ratios = ", ".join(f"×{x.ppl_ratio:.3g}" for x in acts if x.ppl_ratio is not None)
    it = "them" if len(acts) > 1 else "it"
    each = "each" if len(acts) > 1 else "it"
    verdicts.discard(None)  # not formed on the verification text: said in its own line
    if verdicts == {NEEDED}:
        line += f"; the model needs {it} (perplexity {ratios} with {each} ablated)"
    elif verdicts == {MATTERS}:
        line += f"; {it} matter{'' if len(acts) > 1 else 's'} to the model (perplexity {ratios} with {each} ablated)"
    elif verdicts == {NOT_NEEDED}:
        line += f"; the model does not need {it} (perplexity {ratios} with {each} ablated)"
    elif verdicts:
        said = ", ".join(f"{x.verdict} ×{x.ppl_ratio:.3g}" for x in acts if x.verdict)
        line += f"; the model needs some of them more than others ({said}, each ablated)"
    elif a.origin and a.origin.kind in (SUPER_WEIGHT, INPUT_FEATURE) and not result.verified:
        line += " (not verified: --verify zeroes them and ablates the activation)"
    return line + "."


def _grouped(acts: list[MassiveActivation]) -> list[list[MassiveActivation]]:
    groups: dict[tuple, list[MassiveActivation]] = {}
    for a in acts:
        o = a.origin
        key = ((o.kind, a.first_layer, o.column, tuple(o.rows)) if o and o.kind == INPUT_FEATURE
               else (id(a),))
        groups.setdefault(key, []).append(a)
    return list(groups.values())


def _unexplained_spikes(result) -> list[str]:
    """Early candidates that make no massive activation: spikes the residual stream does not keep."""
    in_origins = {w.key for a in result.massive if a.origin for w in a.origin.weights}
    lines = []
    for s in result.super_weights:
        if s.late or s.key in in_origins:
            continue
        after = (f"; the post-MLP norm rescales it to {_num(s.norm_output)}" if s.norm_output is not None else "")
        lines.append(f"{s.label()}: a down projection spike (Y = {_num(s.output_value)}) with no massive "
                     f"activation in the residual stream behind it{after}.")
    return lines


def _columns(result) -> list[str]:
    """One line per input feature that feeds several candidate rows and no massive activation names."""
    named = {(a.first_layer, a.origin.column) for a in result.massive
             if a.origin and a.origin.kind == INPUT_FEATURE}
    groups: dict[tuple, list] = {}
    for s in result.super_weights:
        groups.setdefault((s.layer, s.col, s.expert), []).append(s)
    lines = []
    for (layer, col, expert), sws in groups.items():
        if len({s.row for s in sws}) < 2 or (layer, col) in named:
            continue
        e = f" (expert {expert})" if expert is not None else ""
        lines.append(f"One input feature, several rows: column {col} of layer {layer}{e} feeds rows "
                     f"{', '.join(str(s.row) for s in sorted(sws, key=lambda s: s.row))} (found together).")
    return lines


def detection_tables(model: dict, run) -> list[Table]:
    """The whole `detect` report for a `DetectionRun` as tables and sentences (`model`: the
    loaded model's `describe()`)."""
    tables: list[Table] = []

    def say(line: str) -> None:  # a sentence after the tables drawn so far
        if tables[-1].columns:
            tables.append(Table("", []))
        tables[-1].notes.append(line)

    result, verification, comparison = run.result, run.verification, run.comparison
    config = result.config
    n = len(set(result.prompts))
    verified = verification is not None
    state = "converged" if result.converged else "stopped at the round limit"
    tables.append(Table("", [], notes=[
        f"{model['ref']} ({model['model_type']}, {model['num_layers']} layers, {model['dtype']}"
        f"{', in ' + model['engine'] if model.get('engine') else ''}) · "
        f"{n} prompt(s) · {result.rounds} round(s), {state}", headline(result)]))
    early_acts = [a for a in result.massive if not a.late]
    late_acts = [a for a in result.massive if a.late]
    criterion = (f"|h| > {config.massive_floor:g} and > {config.massive_ratio:g}× the median |h| "
                 "of its hidden state")
    if early_acts:
        tables.append(massive_table(f"Massive activations in the residual stream ({criterion})",
                                early_acts, result, verified, n))
    early = [s for s in result.super_weights if not s.late]
    if early:
        title = "Super weight candidates, verified" if verified else "Super weight candidates"
        tables.append(super_weight_table(title, early, n, verified))
    if late_acts:
        tables.append(massive_table(f"Late-layer massive activations (first at layer ≥ {config.late_fraction:g} "
                                "of depth; reported apart)", late_acts, result, verified, n))
    if result.late:
        tables.append(super_weight_table(
            f"Late-layer spikes (layer ≥ {config.late_fraction:g} of depth; reported apart)",
            result.late, n, verified))
    if not result.massive and not result.super_weights:
        say(f"No massive activation ({criterion}) and no down projection spike "
                  f"(output ≥ max({config.min_output:g}, {config.output_ratio:g}× median layer), "
                  f"input ≥ max({config.min_input:g}, {config.input_ratio:g}× median layer)).")
    for group in _grouped(early_acts) + _grouped(late_acts):
        say(_sentence(group, result))
    for line in _unexplained_spikes(result) + _columns(result):
        say(line)
    if not result.converged:
        say(f"The search stopped at the round limit ({config.max_rounds} rounds) while still finding new "
                  "candidates: there may be more (raise --max-rounds).")
    if n > 1:
        stable = [s.label() for s in result.super_weights if s.prompts_found == n]
        say(f"Found in all {n} prompts: {', '.join(stable) or 'none'}")
    if verification:
        zeroed = [s for s in result.super_weights if not s.late]
        line = (f"Verification on {verification.tokens} tokens of the {verification.text_source}: "
                f"perplexity {verification.ppl:.4g}")
        if zeroed:
            line += (f", with all early candidates zeroed {verification.ppl_all_pruned:.4g} "
                     f"(×{verification.ppl_all_pruned / verification.ppl:.4g})")
        if result.massive:
            line += "; a massive activation is ablated by setting it to " + verification.ablated_to
        say(line + ".")
        scale = getattr(verification, "scale", None)
        if scale is not None:
            say(f"Verdicts by perplexity ratio (the ppl× columns): {scale.legend()}.")
        for channel, first in getattr(verification, "not_formed", []):
            say(f"The massive activation on channel {channel} (first after layer {_layer(first)}) does not form "
                "on the verification text: no verdict for it.")
    say(f"Catalog: {comparison.verdict}"
              + (f" ({comparison.entry.model}; {comparison.entry.source})" if comparison.entry else ""))
    if comparison.entry and comparison.missing:
        say(f"  catalogued but not found: {comparison.missing}")
    if comparison.entry and comparison.new:
        say(f"  found but not catalogued: {comparison.new}")
    if getattr(run, "experts", None) is not None:  # a mixture of experts: its super experts
        from superweight.report.moe import moe_tables

        tables += moe_tables(run.experts)
    return tables


def render_detection(out, lm, run) -> None:
    """Print the `detect` report on a rich console."""
    show(out, detection_tables(lm.describe(), run))


def headline(result) -> str:
    """One line: how many massive activations, super weights (or candidates) and late spikes."""
    early_acts = [a for a in result.massive if not a.late]
    parts = []
    if early_acts:
        kinds = sorted({a.origin.kind for a in early_acts if a.origin})
        sup = sum(verified_super_activation(a, result) for a in early_acts)
        parts.append(f"{len(early_acts)} massive activation(s) (made by: {', '.join(kinds)})"
                     + (f", {sup} of them super activation(s)" if sup else ""))
    else:
        parts.append("no massive activation")
    early = [s for s in result.super_weights if not s.late]
    if not early:
        parts.append("no super weight candidate")
    elif result.verified:
        matter = sum(s.verdict == MATTERS for s in early)
        parts.append(f"{sum(s.verdict == SUPER for s in early)} verified super weight(s) "
                     + (f"and {matter} that matter(s) " if matter else "") + f"of {len(early)} candidate(s)")
    else:
        parts.append(f"{len(early)} super weight candidate(s) (not verified)")
    late_acts = sum(a.late for a in result.massive)
    if result.late:
        parts.append(f"{len(result.late)} late-layer spike(s) reported apart")
    if late_acts:
        parts.append(f"{late_acts} late-layer massive activation(s) reported apart")
    return "Found: " + " · ".join(parts)


# --- trace ---------------------------------------------------------------------------------------

def trace_table(t) -> Table:
    pruned = t.pruned is not None
    cols = ["layer", "max |h|", "channel", "token (pos)", "× median", "h at MA"]
    cols += ["max |h| zeroed", "channel ", "h at MA, zeroed"] if pruned else []
    table = Table(f"Residual stream per layer — {t.prompt!r}", [Column(c, "right") for c in cols])
    rows = zip(t.original, t.pruned) if pruned else ((o, None) for o in t.original)
    for o, p in rows:
        tok = t.tokens[o.position] if o.position < len(t.tokens) else "?"
        cells = [_layer(o.layer), _num(abs(o.value)), str(o.channel), f"{tok!r} ({o.position})",
                 _num(o.ratio, ".0f"), _num(o.at)]
        if p is not None:
            cells += [_num(abs(p.value)), str(p.channel), _num(p.at)]
        table.rows.append(cells)
    return table


def trace_summary(t) -> str:
    a = t.activation
    if a is None:
        return ("No massive activation in the residual stream for this prompt "
                f"(|h| > {t.detection.config.massive_floor:g} and > {t.detection.config.massive_ratio:g}× "
                "the median |h| of its hidden state).")
    where = ("already in the embedding output" if a.first_layer == EMBEDDING_LAYER
             else f"first in the residual stream after layer {a.first_layer}")
    line = (f"Massive activation at channel {a.channel}, token {a.token!r} (position {a.position}): {where}, "
            f"carried through layer {a.last_layer} (massive in {a.layers} layers); made by "
            f"{made_by(a, t.detection)}; the layer max sits on it in "
            f"{len(t.same_channel_layers)}/{len(t.original)} rows.")
    if t.removed:
        what = "the weights that make it" if t.removed_make_it else "not what makes it, the early candidates"
        line += f" Zeroed in the second pass ({what}): {_labels(t.removed)}."
    return line


def trace_tables(t) -> list[Table]:
    table = trace_table(t)
    table.notes.append(trace_summary(t))
    return [table]


def render_trace(out, t) -> None:
    show(out, trace_tables(t))

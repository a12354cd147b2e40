"""One census row per model, read from its entry: the figures a cross-model comparison needs.

The row is derived, never measured again: architecture and size from the loaded model, massive
activations and what makes them, super weight candidates and how many verification kept, the
strongest perplexity ratio a single zeroed weight caused, the catalog's verdict, time and peak
memory, and with `--ablate quick` each Table 1 condition's average accuracy and perplexities. Plain
values only, so the same row becomes the terminal table, JSON, CSV and the plots.
"""

from __future__ import annotations

from collections import Counter

from superweight.census.store import DONE

SUPER = "super weight"  # the verdict `superweight.verify` gives a candidate the model needs

# CSV / JSON column order
FIELDS = ("ref", "status", "architecture", "params", "layers", "massive", "origins", "candidates",
          "verified", "super_weights", "max_ppl_ratio", "super_activation", "catalog", "seconds",
          "peak_ram_bytes", "ablation", "fingerprint", "error")


def summarize(entry: dict) -> dict:
    """The census row of one entry (a failed one keeps its error and leaves the figures empty)."""
    row = dict.fromkeys(FIELDS)
    row.update(ref=entry["ref"], status=entry["status"], error=entry.get("error"), seconds=entry.get("seconds"),
               peak_ram_bytes=(entry.get("peak_memory") or {}).get("ram"),
               fingerprint=entry.get("resolved_fingerprint") or entry.get("fingerprint"))
    d = entry.get("detect")
    if entry["status"] != DONE or not d:
        return row
    model = d["model"]
    early = [s for s in d["super_weights"] if not s["late"]]
    verified = d.get("verification") is not None
    kept = [s for s in early if s.get("verdict") == SUPER] if verified else early
    ratios = [r for s in early for r in (s.get("ppl_ratio"), s.get("ppl_ratio_given_others")) if r is not None]
    origins = Counter((a["origin"] or {}).get("kind", "unknown") for a in d["massive_activations"])
    row.update(architecture=model["model_type"], params=entry.get("params"), layers=model["num_layers"],
               massive=len(d["massive_activations"]),
               origins=", ".join(f"{k} ×{n}" for k, n in sorted(origins.items())),
               candidates=len(early), verified=len(kept) if verified else None,
               super_weights=[[s["layer"], s["row"], s["col"]] + ([s["expert"]] if s.get("expert") is not None else [])
                              for s in kept],
               max_ppl_ratio=max(ratios) if ratios else None,
               super_activation=max((abs(a["value"]) for a in d["super_activations"]), default=None),
               catalog=d["catalog"]["verdict"], ablation=_ablation(entry.get("ablation")))
    return row


def _ablation(payload: dict | None) -> dict | None:
    """`--ablate quick`: each condition's average accuracy and perplexities (None where it could not run)."""
    if not payload:
        return None
    return {r["condition"]: {k: v for k, v in r["summary"].items() if k == "average" or k.endswith("_ppl")}
            if r["summary"] else None for r in payload["rows"]}


def depth_points(rows: list[dict]) -> list[tuple[str, float, int]]:
    """(architecture, layer / number of layers, layer) of every super weight kept, for the depth plot."""
    return [(r["architecture"], s[0] / r["layers"], s[0]) for r in rows if r["status"] == DONE
            for s in r["super_weights"] or [] if r["layers"]]

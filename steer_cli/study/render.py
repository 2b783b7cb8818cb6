"""Terminal summaries of the token-level studies (tokens, patch, persistence), from study.json."""

from __future__ import annotations

from typing import Any, Optional

from rich.table import Table
from rich.text import Text

from steer_cli.terminal import print_table, print_text


def _q(text: str) -> str:
    return f"'{text}'"


def _num(x: Optional[float], fmt: str = "{:+.4f}") -> str:
    return "—" if x is None else fmt.format(x)


def _stat(q: Optional[dict[str, Any]], fmt: str = "{:+.4f}") -> str:
    if not q:
        return "—"
    return f"{fmt.format(q['median'])} [{fmt.format(q['q25'])}, {fmt.format(q['q75'])}]"


def render_tokens(doc: dict[str, Any], console: Any) -> None:
    r = doc["results"]
    inputs = doc["inputs"]
    against = inputs.get("against", {}).get("path", "the base model")
    tok = _q(r["token"]["token"])
    print_text(console, Text(
        f"study tokens: {inputs['vectors']['path']} against {against}; {r['samples']} completions "
        f"({r['truncated']} cut at the budget, kept), {r['positions']} generated positions"))
    table = Table(title=f"position 0 vs positions > 0 (median [IQR]; token {tok})", title_justify="left")
    for name in ("", "position 0", "positions > 0"):
        table.add_column(name, justify="right" if name else "left")
    f, rest = r["first"], r["rest"]
    table.add_row(f"Δp {tok}", _stat(f["token_delta"]), _stat(rest["token_delta"]))
    table.add_row(f"p {tok} reference → steered", f"{_num(f['token_reference'], '{:.4f}')} → "
                  f"{_num(f['token_steered'], '{:.4f}')}",
                  f"{_num(rest['token_reference'], '{:.4f}')} → {_num(rest['token_steered'], '{:.4f}')}")
    table.add_row("KL(reference || steered)", _stat(f["kl"], "{:.4g}"), _stat(rest["kl"], "{:.4g}"))
    table.add_row("mean KL", _num((f["kl"] or {}).get("mean"), "{:.4g}"), _num((rest["kl"] or {}).get("mean"), "{:.4g}"))
    table.add_row("argmax changed", _num(f["frac_argmax_changed"], "{:.1%}"), _num(rest["frac_argmax_changed"], "{:.1%}"))
    table.add_row("top Δ token = reference argmax", _num(f["frac_top_is_reference_argmax"], "{:.1%}"),
                  _num(rest["frac_top_is_reference_argmax"], "{:.1%}"))
    table.add_row("top Δ token = steered argmax", _num(f["frac_top_is_steered_argmax"], "{:.1%}"),
                  _num(rest["frac_top_is_steered_argmax"], "{:.1%}"))
    print_table(console, table)
    tokens = Table(title="most promoted / suppressed tokens by mean Δp", title_justify="left")
    for name in ("#", "position 0 +", "Δp", "position 0 -", "Δp", "positions > 0 +", "Δp", "positions > 0 -", "Δp"):
        tokens.add_column(name, justify="right" if name in ("#", "Δp") else "left")
    show = min(5, len(f["promoted_by_mean_delta"]) or 5)
    for n in range(show):
        cells = [str(n + 1)]
        for group in (f, rest):
            for key in ("promoted_by_mean_delta", "suppressed_by_mean_delta"):
                items = group[key]
                if n < len(items):
                    cells += [_q(items[n]["token"]), f"{items[n]['mean_delta']:+.4f}"]
                else:
                    cells += ["", ""]
        tokens.add_row(*cells)
    print_table(console, tokens)


def render_patch(doc: dict[str, Any], console: Any) -> None:
    r = doc["results"]
    kl = r["metric"] == "kl"
    head = (f"study patch: {doc['inputs']['vectors']['path']}, the vector of layer {r['source_layer']} "
            f"(norm {r['vector_norm']:.4g}) through layer {r['target_layer']} ({r['heads']} heads, "
            f"{r['kv_heads']} key-value heads)")
    if kl:
        head += (f"; {r['samples']} completions ({r['truncated']} cut at the budget, kept), {r['positions']} "
                 f"positions; KL({r['reference']['label']} || patch)")
    print_text(console, Text(head))
    table = Table(title="per patch", title_justify="left")
    if kl:
        for name in ("patch", "mean KL", "KL position 0", "KL positions > 0", "most promoted (mean Δp)"):
            table.add_column(name, justify="left" if name.startswith(("patch", "most")) else "right")
        for p in r["patches"]:
            top = p["promoted"][0] if p["promoted"] else None
            table.add_row(p["label"], _num(p["kl"]["mean"], "{:.4g}"), _num(p["kl"]["first"], "{:.4g}"),
                          _num(p["kl"]["rest"], "{:.4g}"),
                          f"{_q(top['token'])} {top['mean_delta']:+.3g}" if top else "—")
    else:
        table.add_column("patch")
        table.add_column("Average", justify="right")
        for p in r["patches"]:
            avg = p.get("average") or {}
            table.add_row(p["label"], "—" if avg.get("mean") is None else
                          f"{100 * avg['mean']:.1f} ± {100 * (avg.get('std') or 0.0):.1f}")
    print_table(console, table)


def render_persistence(doc: dict[str, Any], console: Any) -> None:
    r = doc["results"]
    print_text(console, Text(
        f"study persistence: {doc['inputs']['merged']['path']}; {r['samples']} prompts x {len(r['injected'])} "
        f"injection layers = {r['completions']} completions ({r['truncated']} cut at the budget, kept)"))
    table = Table(title="injection layer i: row i of each matrix, at the layers l >= i (l: value)",
                  title_justify="left")
    for name in ("i", "token_cos", "diff_cos", "layer_cos", "causality max |D_l<i|"):
        table.add_column(name, justify="right" if name in ("i",) else "left")
    for i in r["injected"]:
        def row(name: str) -> str:
            return " ".join(f"{l}:{v:+.2f}" for l, v in enumerate(r[name][i]) if v is not None)
        table.add_row(str(i), row("token_cos"), row("diff_cos"), row("layer_cos"),
                      f"{r['causality_max_abs'][str(i)]:.3g}")
    print_table(console, table)
    corr = Table(title="correlations over i < j (Pearson r, slope, n)", title_justify="left")
    kinds = sorted({k for v in r["correlations"].values() for k in v})
    corr.add_column("matrix")
    for k in kinds:
        corr.add_column(k, justify="right")
    for name, v in r["correlations"].items():
        cells = []
        for k in kinds:
            fit = v.get(k) or {}
            cells.append("—" if fit.get("r") is None else f"{fit['r']:+.3f} ({fit['slope']:+.3g}, {fit['n']})")
        corr.add_row(name, *cells)
    print_table(console, corr)
    lens = Table(title="logit lens of the last layer's mean difference (cosine)", title_justify="left")
    for name in ("i", "norm", "promoted", "suppressed"):
        lens.add_column(name, justify="right" if name in ("i", "norm") else "left")
    for entry in r["last_layer_lens"]:
        lens.add_row(str(entry["layer"]), f"{entry['norm']:.4g}",
                     " ".join(_q(t["token"]) for t in entry["top"][:5]),
                     " ".join(_q(t["token"]) for t in entry["bottom"][:5]))
    print_table(console, lens)

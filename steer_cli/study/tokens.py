"""``steer study tokens``: is the vector a token-substitution bias on the first generated token?
(the companion paper's section 6, Figures 3 and 19; the reference's ``last_layer_steering``).

One completion per prompt is sampled with the vectors; prompt + completion is teacher-forced with
the vectors (Q) and without them, or with a second vectors file (P). Per generation position
(k = 0 is the first generated token): KL(P || Q) in float64, the tokens most promoted and most
suppressed (Delta = q - p), both argmaxes, and p and q of one named token ("To" for the paper's
Qwen, "Step" for Llama; by default the token the vectors promote most at position 0, found from
the prompts alone). The summary contrasts position 0 with the rest. Completions cut at their budget
are kept (the reference drops them, biasing toward short answers); no [tokens x vocabulary] tensor
is kept per sample (rows are streamed in chunks).

Output: ``samples.jsonl`` (per sample: completion ids and the per-position arrays), ``study.json``,
``figures/token_delta.png`` (Fig. 3), ``figures/promoted_tokens.png`` (Fig. 19),
``figures/kl_by_position.png``.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterator, Optional

import numpy as np
import torch

from steer_cli.errors import SteerError
from steer_cli.lens.tokens import TokenRenderer
from steer_cli.lock import hold_dir
from steer_cli.patching.archs import locate
from steer_cli.patching.steering import SteeringHandle, attach_steering
from steer_cli.patching.strength import kept_layers
from steer_cli.settings import Settings
from steer_cli.study import inputs as I
from steer_cli.study.forced import final_hidden, head_logits, model_device, pad_right, sample_completions
from steer_cli.study.partial import append_lines, read_lines, read_partial, write_partial
from steer_cli.study.position_stats import DeltaSums, RowStats, quantiles, stream_rows
from steer_cli.study.progress import StudyProgress
from steer_cli.study.record import read_study, write_study
from steer_cli.study.tokens_plots import plot_kl_by_position, plot_promoted_tokens, plot_token_delta

EXPERIMENT = "tokens"
_GROUPS = ("first", "rest")


class Configurations:
    """The compared configurations on one model: Q (the vectors) and P (base or second vectors)."""

    def __init__(self, model: Any, q: I.LoadedVectors, p: Optional[I.LoadedVectors], scale: float,
                 subset: Optional[list[int]]) -> None:
        self.q = attach_steering(model, q.tensor, layers=q.layers, place=q.place, trainable=False, scale=scale,
                                 subset=subset)
        self.p: Optional[SteeringHandle] = None
        if p is not None:
            self.p = attach_steering(model, p.tensor, layers=p.layers, place=p.place, trainable=False, scale=scale,
                                     subset=subset)

    @contextlib.contextmanager
    def steered(self) -> Iterator[None]:
        with self.p.disabled() if self.p is not None else contextlib.nullcontext():
            yield

    @contextlib.contextmanager
    def reference(self) -> Iterator[None]:
        with self.q.disabled():
            yield

    def remove(self) -> None:
        self.q.remove()
        if self.p is not None:
            self.p.remove()


def stats_temperature(temperature: float) -> float:
    """Distributions are softmax(logits / T) at the sampling temperature; greedy sampling: T = 1."""
    return temperature if temperature > 0 else 1.0


@torch.no_grad()
def most_promoted_first_token(model: Any, configs: Configurations, prompts: list[list[int]], pad_id: int,
                              batch: int, temperature: float) -> int:
    """The token whose probability the vectors raise most on average at the first generated
    position (the prompts' last rows), when no --token is named."""
    located = locate(model)
    device = model_device(model)
    total: Optional[torch.Tensor] = None
    for start in range(0, len(prompts), batch):
        chunk = prompts[start:start + batch]
        ids, mask = pad_right(chunk, pad_id, device)
        last = torch.tensor([len(p) - 1 for p in chunk], device=device)
        rows = torch.arange(len(chunk), device=device)
        with configs.steered():
            q = final_hidden(model, ids, mask, located)[rows, last]
        with configs.reference():
            p = final_hidden(model, ids, mask, located)[rows, last]
        t = stats_temperature(temperature)
        delta = (torch.softmax(head_logits(model, q, located).double() / t, -1)
                 - torch.softmax(head_logits(model, p, located).double() / t, -1)).sum(0)
        total = delta if total is None else total + delta
    assert total is not None
    return int(total.argmax())


def sample_line(unit: int, sample: Any, stats: RowStats) -> dict[str, Any]:
    def f(x: np.ndarray) -> list:
        return np.asarray(x, dtype=np.float64).round(8).tolist()

    return {"unit": unit, **sample.to_json(), "kl": f(stats.kl), "top_ids": stats.top_ids.tolist(),
            "top_delta": f(stats.top_delta), "bottom_ids": stats.bottom_ids.tolist(),
            "bottom_delta": f(stats.bottom_delta), "argmax_reference": stats.argmax_p.tolist(),
            "argmax_steered": stats.argmax_q.tolist(), "entropy_reference": f(stats.entropy_p),
            "entropy_steered": f(stats.entropy_q), "token_reference": f(stats.token_p[:, 0]),
            "token_steered": f(stats.token_q[:, 0])}


def summarize(lines: list[dict[str, Any]], sums: DeltaSums, renderer: TokenRenderer, token: int,
              s: Any) -> dict[str, Any]:
    """study.json results from the per-sample lines and the Delta sums."""
    def tok(i: int) -> str:
        return renderer.text(int(i))

    by_group: dict[str, dict[str, list[float]]] = {g: defaultdict(list) for g in _GROUPS}
    kl_at = [[] for _ in range(s.first_positions)]
    promoted: dict[str, dict[int, list[float]]] = {g: defaultdict(list) for g in _GROUPS}
    for line in lines:
        for k, kl in enumerate(line["kl"]):
            g = "first" if k == 0 else "rest"
            d = by_group[g]
            d["kl"].append(kl)
            d["token_delta"].append(line["token_steered"][k] - line["token_reference"][k])
            d["token_reference"].append(line["token_reference"][k])
            d["token_steered"].append(line["token_steered"][k])
            top = line["top_ids"][k][0]
            d["reinforce"].append(float(top == line["argmax_reference"][k]))
            d["change"].append(float(top == line["argmax_steered"][k]))
            d["argmax_changed"].append(float(line["argmax_reference"][k] != line["argmax_steered"][k]))
            promoted[g][int(top)].append(line["top_delta"][k][0])
            if k < s.first_positions:
                kl_at[k].append(kl)

    def mean(x: list[float]) -> Optional[float]:
        return float(np.mean(x)) if x else None

    def listed(mean_delta: Optional[torch.Tensor], largest: bool) -> list[dict[str, Any]]:
        if mean_delta is None:
            return []
        vals, ids = torch.topk(mean_delta, min(s.summary_tokens, mean_delta.numel()), largest=largest)
        return [{"id": int(i), "token": tok(int(i)), "mean_delta": float(v)} for v, i in zip(vals, ids)]

    def groups_of(g: str) -> list[dict[str, Any]]:
        items = sorted(promoted[g].items(), key=lambda kv: (-len(kv[1]), -float(np.mean(kv[1]))))
        return [{"id": i, "token": tok(i), "count": len(v), "mean_delta": float(np.mean(v)),
                 "max_delta": float(np.max(v))} for i, v in items[:s.summary_tokens]]

    results: dict[str, Any] = {
        "samples": len(lines), "stopped": sum(bool(x["stopped"]) for x in lines),
        "truncated": sum(not x["stopped"] for x in lines), "positions": sum(len(x["kl"]) for x in lines),
        "token": {"id": token, "token": tok(token)},
        "kl_by_position": [mean(v) for v in kl_at],
        "kl_by_position_n": [len(v) for v in kl_at],
    }
    for g in _GROUPS:
        d = by_group[g]
        results[g] = {
            "kl": quantiles(d["kl"]), "token_delta": quantiles(d["token_delta"]),
            "token_reference": mean(d["token_reference"]), "token_steered": mean(d["token_steered"]),
            "frac_top_is_reference_argmax": mean(d["reinforce"]), "frac_top_is_steered_argmax": mean(d["change"]),
            "frac_argmax_changed": mean(d["argmax_changed"]),
            "promoted_by_mean_delta": listed(sums.mean(g), True),
            "suppressed_by_mean_delta": listed(sums.mean(g), False),
            "top_promoted_tokens": groups_of(g),
        }
    return results


def run_tokens(settings: Settings, vectors: Path, run: Optional[Path], *, against: Optional[Path],
               output_dir: Optional[Path] = None, interactive: Optional[bool] = None,
               plot: bool = True) -> tuple[dict[str, Any], Path]:
    """The tokens study of ``vectors`` (against ``against`` or the base model); returns study.json
    and the output directory (a finished study there is read back, not redone)."""
    s = settings.study.tokens
    scales = settings.inference.scale
    if len(scales) != 1:
        raise SteerError(f"--scale takes one factor here, got {scales}; run the study once per factor")
    q = I.load_vectors_for(vectors, settings)
    p = I.load_vectors_for(against, settings) if against is not None else None
    num_layers = q.tensor.shape[0]
    subset = settings.inference.layers
    kept_layers(q.layers, subset, num_layers)
    if p is not None:
        kept_layers(p.layers, subset, num_layers)
    out = Path(output_dir) if output_dir is not None else I.default_output_dir(settings, EXPERIMENT, vectors, run)
    inputs = {"vectors": vectors, **({"against": against} if against is not None else {})}
    ident = I.identity(EXPERIMENT, inputs, settings, s.model_dump(mode="json"))
    tokenizer = I.load_tokenizer_for(settings)
    token = I.single_token(tokenizer, s.token) if s.token is not None else None
    problems = I.study_problems(settings, s.prompts, s.seed)
    with hold_dir(out, f"steer study {EXPERIMENT}"):
        d = I.check_study_dir(out, EXPERIMENT, ident, settings.output.overwrite)
        if d.finished:
            return read_study(out, EXPERIMENT), out
        model, tokenizer = I.load_model(settings)
        prompts = I.render(settings, tokenizer, problems)
        stops = I.stop_ids(settings, tokenizer)
        budget = I.completion_budget(settings, s.max_new_tokens)
        I.init_study_dir(d, settings, ident)
        configs = Configurations(model, q, p, scales[0], subset)
        try:
            doc = _run(model, tokenizer, configs, prompts, stops, budget, token, settings, out, interactive)
        finally:
            configs.remove()
        doc_inputs = {"vectors": vectors, **({"against": against} if against is not None else {})}
        if plot:
            _figures(out, doc)
        return write_study_doc(out, doc_inputs, settings, doc), out


def write_study_doc(out: Path, inputs: dict[str, Any], settings: Settings, results: dict[str, Any]) -> dict[str, Any]:
    write_study(out, EXPERIMENT, inputs=inputs, settings={"study": settings.study.tokens.model_dump(mode="json"),
                                                             "model": settings.model.name,
                                                             "inference": settings.inference.model_dump(mode="json")},
                results=results)
    return read_study(out, EXPERIMENT)


def _run(model: Any, tokenizer: Any, configs: Configurations, prompts: list[list[int]], stops: tuple[int, ...],
         budget: int, token: Optional[int], settings: Settings, out: Path, interactive: Optional[bool]) -> dict[str, Any]:
    s = settings.study.tokens
    located = locate(model)
    device = model_device(model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stops[0]
    vocab = int(located.unembed.weight.shape[0])
    temperature = stats_temperature(s.temperature)
    tensors, units, meta = read_partial(out)
    read_lines(out, units)  # lines of a unit whose sums were not written: redone
    sums = DeltaSums(vocab)
    for g in _GROUPS:
        if f"sum_{g}" in tensors:
            sums.sums[g] = tensors[f"sum_{g}"].to(torch.float64)
            sums.counts[g] = int(meta["counts"][g])
    if token is None:
        token = meta.get("token")
    if token is None:
        token = most_promoted_first_token(model, configs, prompts, pad_id, s.batch, s.temperature)
    batches = [list(range(i, min(i + s.batch, len(prompts)))) for i in range(0, len(prompts), s.batch)]
    done_samples = sum(len(b) for b in batches[:units])
    with StudyProgress(f"study tokens · {len(prompts)} prompts", len(prompts), done=done_samples,
                       interactive=interactive) as bar:
        for unit in range(units, len(batches)):
            idx = batches[unit]
            with configs.steered():
                samples = sample_completions(model, tokenizer, [prompts[i] for i in idx], indices=idx,
                                             temperature=s.temperature, top_p=s.top_p, max_new_tokens=budget,
                                             stop_ids=stops, seed=s.seed, batch=s.batch)
            ids, mask = pad_right([x.ids for x in samples], pad_id, device)
            with configs.steered():
                hq = final_hidden(model, ids, mask, located)
            with configs.reference():
                hp = final_hidden(model, ids, mask, located)
            lines = []
            for row, sample in enumerate(samples):
                rows = slice(sample.offset, sample.offset + sample.positions)

                def sink(first_row: int, delta: torch.Tensor) -> None:
                    if first_row == 0:
                        sums.add("first", delta[:1])
                        sums.add("rest", delta[1:])
                    else:
                        sums.add("rest", delta)

                stats = stream_rows(hp[row, rows], hq[row, rows], lambda h: head_logits(model, h, located),
                                    vocab=vocab, temperature=temperature, k=s.top_k, tokens=[token], delta_sink=sink)
                lines.append(sample_line(unit, sample, stats))
            append_lines(out, lines)
            write_partial(out, {f"sum_{g}": sums.sums[g] for g in sums.sums}, unit + 1,
                          {"token": token, "counts": sums.counts})
            bar.advance(len(idx))
    lines = read_lines(out, len(batches))
    return summarize(lines, sums, TokenRenderer(tokenizer), token, s)


def _figures(out: Path, results: dict[str, Any]) -> None:
    lines = read_lines(out)
    first = [x["token_steered"][0] - x["token_reference"][0] for x in lines if x["kl"]]
    rest = [b - a for x in lines for a, b in zip(x["token_reference"][1:], x["token_steered"][1:])]
    figures = out / "figures"
    figures.mkdir(exist_ok=True)
    plot_token_delta(first, rest, results["token"]["token"], figures / "token_delta.png")
    groups: dict[int, dict[str, list[float]]] = defaultdict(lambda: {"first": [], "rest": []})
    for x in lines:
        for k, (ids, deltas) in enumerate(zip(x["top_ids"], x["top_delta"])):
            groups[int(ids[0])]["first" if k == 0 else "rest"].append(deltas[0])
    names = {t["id"]: t["token"] for g in _GROUPS for t in results[g]["top_promoted_tokens"]}
    plot_promoted_tokens(groups, names, figures / "promoted_tokens.png")
    plot_kl_by_position(results["kl_by_position"], results["rest"]["kl"], figures / "kl_by_position.png")

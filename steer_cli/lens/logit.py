"""The logit lens on steering vectors (paper section 4.2): which tokens each layer's vector pushes
the residual stream toward and away from, read through the unembedding W_U.

As in the reference implementation, W_U is the ``lm_head`` weight with no final norm applied; the
score of token v for layer l is cos(s_l, u_v) (or the raw dot product <s_l, u_v>).
The unembedding is read by ``lens.unembed``; tokens are shown by ``lens.tokens``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch
from rich.table import Table
from rich.text import Text

from steer_cli.errors import SteerError
from steer_cli.lens.tokens import TokenRenderer
from steer_cli.lens.unembed import load_unembedding, unembed_matches
from steer_cli.models import load_tokenizer
from steer_cli.runs import latest_run
from steer_cli.terminal import print_table, print_text
from steer_cli.train.checkpoint import run_vectors_file
from steer_cli.vectors.file import check_fits, load_vectors

SCORE_KINDS = ("cosine", "dot")


# -- pure math ---------------------------------------------------------------------------------
def _safe_norms(x: torch.Tensor) -> torch.Tensor:
    """Row norms with zeros replaced by 1, so zero rows give scores 0 instead of NaN."""
    n = x.norm(dim=-1)
    return torch.where(n > 0, n, torch.ones_like(n))


def lens_scores(vectors: torch.Tensor, unembed: torch.Tensor, kind: str = "cosine",
                chunk: int = 16384) -> torch.Tensor:
    """[L, d] vectors against a [V, d] unembedding -> [L, V] float32 scores.

    cosine: <s_l, u_v> / (||s_l|| ||u_v||); dot: <s_l, u_v>. W_U is converted to float32 in row
    chunks, so a bf16 matrix of a large vocabulary is never copied whole.
    """
    if kind not in SCORE_KINDS:
        raise ValueError(f"kind must be one of {SCORE_KINDS}, got {kind!r}")
    v = vectors.detach().to(torch.float32)
    if v.ndim != 2 or unembed.ndim != 2 or v.shape[1] != unembed.shape[1]:
        raise SteerError(f"vectors {list(v.shape)} and unembedding {list(unembed.shape)} do not share the hidden size")
    if kind == "cosine":
        v = v / _safe_norms(v)[:, None]
    out = torch.empty(v.shape[0], unembed.shape[0], dtype=torch.float32)
    for start in range(0, unembed.shape[0], chunk):
        w = unembed[start:start + chunk].detach().to(torch.float32)
        part = v @ w.T
        if kind == "cosine":
            part = part / _safe_norms(w)[None, :]
        out[:, start:start + w.shape[0]] = part
    return out


def top_tokens(scores_row: torch.Tensor, k: int, largest: bool = True) -> list[tuple[int, float]]:
    """The k highest (or lowest) scores of one row as (token id, score), best first."""
    k = max(0, min(int(k), scores_row.shape[-1]))
    values, ids = torch.topk(scores_row, k, largest=largest)
    return [(int(i), float(s)) for i, s in zip(ids.tolist(), values.tolist())]


def vector_norms(vectors: torch.Tensor) -> torch.Tensor:
    return vectors.detach().to(torch.float32).norm(dim=-1)


def layer_cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine between row l of a and row l of b -> [L] (0 where either row is zero)."""
    a = a.detach().to(torch.float32)
    b = b.detach().to(torch.float32)
    return (a * b).sum(-1) / (_safe_norms(a) * _safe_norms(b))


def self_cosines(vectors: torch.Tensor) -> torch.Tensor:
    """Layer x layer cosine matrix [L, L] (0 for zero rows)."""
    v = vectors.detach().to(torch.float32)
    v = v / _safe_norms(v)[:, None]
    return v @ v.T


def singular_values(vectors: torch.Tensor) -> torch.Tensor:
    return torch.linalg.svdvals(vectors.detach().to(torch.float32))


def stable_rank(vectors: torch.Tensor) -> float:
    """||S||_F^2 / ||S||_2^2 of the stacked vectors (0 for an all-zero stack)."""
    s = singular_values(vectors)
    if s.numel() == 0 or float(s[0]) == 0.0:
        return 0.0
    return float((s ** 2).sum() / s[0] ** 2)


# -- inputs ------------------------------------------------------------------------------------
def find_vectors(target: Optional[str | Path], runs_dir: str | Path = "runs") -> tuple[Path, Optional[str]]:
    """The vectors file a lens/compare argument means -> (path, note on what was picked).

    A file is taken as is; a directory holding vectors.safetensors is read; a training run
    directory gives final/vectors.safetensors (or its newest checkpoint's); nothing gives the most
    recent training run under ``runs_dir``.
    """
    note = None
    if target is None:
        run = latest_run(runs_dir, kind="train")
        note = f"using the most recent training run {run}"
        target = run
    path = Path(target).expanduser()
    if not path.exists():
        raise SteerError(f"{path} does not exist; pass a vectors file or a training run directory")
    if path.is_file():
        return path, note

    found = run_vectors_file(path)
    if found is not None:
        if found.parent != path and found.parent.name != "final":
            extra = f"{path} has no final/ yet; using {found.parent.name}"
            note = f"{note}; {extra}" if note else extra
        return found, note
    raise SteerError(f"{path} holds no vectors.safetensors (nor final/ or checkpoint-*/ with one); pass the vectors file")


# -- the lens ----------------------------------------------------------------------------------
@dataclass
class TokenScore:
    id: int
    token: str  # readable text (escaped)
    piece: Optional[str]  # raw vocabulary entry
    score: float

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "token": self.token, "piece": self.piece, "score": self.score}


@dataclass
class LayerLens:
    layer: int
    norm: float
    top: list[TokenScore]
    bottom: list[TokenScore]

    @property
    def zero(self) -> bool:
        return self.norm == 0.0


@dataclass
class LensResult:
    vectors_path: str
    model: str
    kind: str
    top_k: int
    num_layers: int
    hidden_size: int
    vocab_size: int
    norms: list[float]
    stable_rank: float
    unembed_hash_ok: Optional[bool]
    layers: list[LayerLens]
    skipped_zero: list[int] = field(default_factory=list)
    scores: Optional[torch.Tensor] = None  # [L, V], for the plots
    cosines: Optional[torch.Tensor] = None  # [L, L]
    singular_values: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "steer-lens", "format_version": 1,
            "vectors": self.vectors_path, "model": self.model, "score": self.kind, "top_k": self.top_k,
            "num_layers": self.num_layers, "hidden_size": self.hidden_size, "vocab_size": self.vocab_size,
            "norms": self.norms, "stable_rank": self.stable_rank,
            "singular_values": self.singular_values, "unembed_matches": self.unembed_hash_ok,
            "layers": [
                {"layer": ll.layer, "norm": ll.norm, "zero": ll.zero,
                 "top": [t.to_json() for t in ll.top], "bottom": [t.to_json() for t in ll.bottom]}
                for ll in self.layers
            ],
        }


def _pick_layers(requested: Optional[list[int]], norms: torch.Tensor) -> tuple[list[int], list[int]]:
    n = norms.shape[0]
    if requested:
        bad = [i for i in requested if not 0 <= i < n]
        if bad:
            raise SteerError(f"--layer {bad[0]} is out of range: the vectors have layers 0..{n - 1}")
        return sorted(set(requested)), []
    layers = [i for i in range(n) if float(norms[i]) > 0]
    return layers, [i for i in range(n) if float(norms[i]) == 0]


def run_lens(target: Optional[str | Path] = None, *, model: Optional[str] = None,
             layers: Optional[list[int]] = None, top_k: int = 50, kind: str = "cosine",
             runs_dir: str | Path = "runs", tokenizer: Any = None) -> LensResult:
    """Read a vectors file (or run) and its model's unembedding; score every layer's vector."""
    if top_k < 1:
        raise SteerError(f"--top-k must be at least 1, got {top_k}")
    if kind not in SCORE_KINDS:
        raise SteerError(f"score must be one of {', '.join(SCORE_KINDS)}, got {kind!r}")
    path, note = find_vectors(target, runs_dir)
    notes = [note] if note else []
    vectors, meta = load_vectors(path)
    model_name = model or meta.get("base_model")
    if not model_name:
        raise SteerError(f"{path} does not name its base model; pass --model")
    unembed = load_unembedding(str(model_name))
    check_fits(vectors, unembed.num_layers, unembed.weight.shape[1], source=path)
    hash_ok = None
    expected = meta.get("unembed_sha256")
    if expected:
        hash_ok = unembed_matches(unembed.weight, str(expected))
        if not hash_ok:
            notes.append(f"warning: the unembedding of {model_name} differs from the one {path.name} was "
                         "trained with (unembed_sha256); the tokens may not mean what they did in training")
    if tokenizer is None:
        tokenizer = load_tokenizer(str(model_name))
    renderer = TokenRenderer(tokenizer)
    scores = lens_scores(vectors, unembed.weight, kind)
    norms = vector_norms(vectors)
    chosen, skipped = _pick_layers(layers, norms)
    if skipped and not layers:
        if chosen:
            notes.append(f"{len(skipped)} layer(s) have zero vectors and are not shown (pass --layer to see them)")
        else:
            notes.append("every layer's vector is zero: there is nothing to read yet (has the run trained?)")

    def tokens(pairs: list[tuple[int, float]]) -> list[TokenScore]:
        return [TokenScore(i, renderer.text(i), renderer.piece(i), s) for i, s in pairs]

    per_layer = []
    for i in chosen:
        zero = float(norms[i]) == 0.0
        per_layer.append(LayerLens(
            i, float(norms[i]),
            [] if zero else tokens(top_tokens(scores[i], top_k, largest=True)),
            [] if zero else tokens(top_tokens(scores[i], top_k, largest=False)),
        ))
    return LensResult(
        vectors_path=str(path), model=str(model_name), kind=kind, top_k=top_k,
        num_layers=vectors.shape[0], hidden_size=vectors.shape[1], vocab_size=unembed.weight.shape[0],
        norms=[float(x) for x in norms], stable_rank=stable_rank(vectors), unembed_hash_ok=hash_ok,
        layers=per_layer, skipped_zero=skipped, scores=scores, cosines=self_cosines(vectors),
        singular_values=[float(x) for x in singular_values(vectors)], notes=notes,
    )


# -- terminal output ---------------------------------------------------------------------------
def quoted(text: str) -> str:
    return f"'{text}'"


def render_lens(result: LensResult, console: Any, show: int = 10) -> None:
    """One rich table per layer: promoted and suppressed tokens with their scores."""

    print_text(console, Text(
        f"{result.vectors_path} through the unembedding of {result.model}: {result.kind} scores, "
        f"{result.num_layers} layers x {result.hidden_size}, vocabulary {result.vocab_size}, "
        f"stable rank {result.stable_rank:.2f}"))
    fmt = "{:+.4f}" if result.kind == "cosine" else "{:+.3g}"
    for ll in result.layers:
        if ll.zero:
            print_text(console, Text(f"layer {ll.layer}: zero vector"))
            continue
        table = Table(title=f"layer {ll.layer} · norm {ll.norm:.4g}", title_justify="left")
        table.add_column("#", justify="right", style="dim")
        table.add_column("promoted", style="green")
        table.add_column("id", justify="right", style="dim")
        table.add_column(result.kind, justify="right")
        table.add_column("suppressed", style="red")
        table.add_column("id", justify="right", style="dim")
        table.add_column(result.kind, justify="right")
        n = min(show, len(ll.top))
        for r in range(n):
            t, b = ll.top[r], ll.bottom[r]
            table.add_row(str(r + 1), Text(quoted(t.token)), str(t.id), fmt.format(t.score),
                          Text(quoted(b.token)), str(b.id), fmt.format(b.score))
        print_table(console, table)

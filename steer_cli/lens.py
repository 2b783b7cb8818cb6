"""The logit lens on steering vectors (paper section 4.2): which tokens each layer's vector pushes
the residual stream toward and away from, read through the unembedding W_U.

As in the reference implementation, W_U is the ``lm_head`` weight with no final norm applied; the
score of token v for layer l is cos(s_l, u_v) (or the raw dot product <s_l, u_v>).
Only the unembedding is read from the checkpoint when it can be (one tensor via ``safe_open``);
the whole model is loaded only as a fallback.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import torch

from steer_cli.errors import SteerError

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


# -- token display -----------------------------------------------------------------------------
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table used by byte-level BPE vocabularies."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


_BYTE_DECODER = {c: b for b, c in _bytes_to_unicode().items()}
_ESCAPES = {"\n": "\\n", "\t": "\\t", "\r": "\\r"}


def escape_bytes(data: bytes) -> str:
    """Readable text of a token's bytes: valid UTF-8 as text, control characters and bytes that
    do not form a character (a piece of a multi-byte character) as escapes."""
    out = []
    text = data.decode("utf-8", errors="surrogateescape")
    for ch in text:
        code = ord(ch)
        if 0xDC80 <= code <= 0xDCFF:  # an undecodable byte, kept by surrogateescape
            out.append(f"\\x{code - 0xDC00:02x}")
        elif ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif not ch.isprintable() and ch != " ":
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}")
        else:
            out.append(ch)
    return "".join(out)


def _tokenizer_style(tokenizer: Any) -> str:
    """'byte' (GPT-2/Llama-3/Qwen byte-level BPE), 'sentencepiece' ('▁' + <0xNN>), or 'plain'."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    decoder = getattr(backend, "decoder", None) if backend is not None else None
    if decoder is not None:
        try:
            state = decoder.__getstate__()
            desc = state.decode("utf-8", "replace") if isinstance(state, bytes) else str(state)
        except Exception:  # a decoder without serialisable state: fall through to the heuristics
            desc = ""
        if "ByteLevel" in desc:
            return "byte"
        if "ByteFallback" in desc or "\u2581" in desc or "Metaspace" in desc:
            return "sentencepiece"
    if getattr(tokenizer, "byte_decoder", None):
        return "byte"
    if getattr(tokenizer, "sp_model", None) is not None:
        return "sentencepiece"
    return "plain"


class TokenRenderer:
    """Token id -> (raw vocabulary piece, readable text)."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        self.style = _tokenizer_style(tokenizer)
        added = getattr(tokenizer, "added_tokens_decoder", None) or {}
        self.added = {int(i): getattr(t, "content", str(t)) for i, t in added.items()}

    def piece(self, token_id: int) -> Optional[str]:
        try:
            piece = self.tokenizer.convert_ids_to_tokens(int(token_id))
        except (IndexError, KeyError, ValueError, OverflowError):
            return None
        return piece if isinstance(piece, str) else None

    def text(self, token_id: int) -> str:
        """What the token writes, with escapes for control characters and partial UTF-8."""
        if token_id in self.added:
            return escape_bytes(self.added[token_id].encode("utf-8"))
        piece = self.piece(token_id)
        if piece is None:  # rows of W_U beyond the tokenizer (vocabularies padded for speed)
            return f"<unused {token_id}>"
        if self.style == "byte" and all(ch in _BYTE_DECODER for ch in piece):
            return escape_bytes(bytes(_BYTE_DECODER[ch] for ch in piece))
        if self.style == "sentencepiece":
            if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
                try:
                    return escape_bytes(bytes([int(piece[3:5], 16)]))
                except ValueError:
                    pass
            return escape_bytes(piece.replace("\u2581", " ").encode("utf-8"))
        if self.style == "plain":
            try:
                return escape_bytes(self.tokenizer.decode([int(token_id)]).encode("utf-8"))
            except Exception:  # a tokenizer that cannot decode a lone id: show the piece
                pass
        return escape_bytes(piece.encode("utf-8"))


# -- inputs ------------------------------------------------------------------------------------
def find_vectors(target: Optional[str | Path], runs_dir: str | Path = "runs") -> tuple[Path, Optional[str]]:
    """The vectors file a lens/compare argument means -> (path, note on what was picked).

    A file is taken as is; a directory holding vectors.safetensors is read; a training run
    directory gives final/vectors.safetensors (or its newest checkpoint's); nothing gives the most
    recent training run under ``runs_dir``.
    """
    note = None
    if target is None:
        from steer_cli.runs import latest_run

        run = latest_run(runs_dir, kind="train")
        note = f"using the most recent training run {run}"
        target = run
    path = Path(target).expanduser()
    if not path.exists():
        raise SteerError(f"{path} does not exist; pass a vectors file or a training run directory")
    if path.is_file():
        return path, note
    from steer_cli.train.checkpoint import run_vectors_file

    found = run_vectors_file(path)
    if found is not None:
        if found.parent != path and found.parent.name != "final":
            extra = f"{path} has no final/ yet; using {found.parent.name}"
            note = f"{note}; {extra}" if note else extra
        return found, note
    raise SteerError(f"{path} holds no vectors.safetensors (nor final/ or checkpoint-*/ with one); pass the vectors file")


@dataclass
class Unembedding:
    weight: torch.Tensor  # [V, d], as stored
    num_layers: int
    source: str  # where it was read from


_UNTIED_KEYS = ("lm_head.weight", "embed_out.weight", "model.lm_head.weight")
_TIED_KEYS = ("model.embed_tokens.weight", "transformer.wte.weight", "wte.weight",
              "gpt_neox.embed_in.weight", "model.embed_in.weight", "embed_tokens.weight")


def _text_config(config: Any) -> Any:
    get = getattr(config, "get_text_config", None)
    return get() if callable(get) else config


def _local_file(model_path: str, filename: str) -> Optional[Path]:
    """A file of a local checkpoint dir, or of a hub repo (downloaded/cached); None if absent."""
    local = Path(model_path)
    if local.is_dir():
        f = local / filename
        return f if f.exists() else None
    try:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(model_path, filename))
    except Exception:  # not on the hub, offline, gated: the caller falls back to a full load
        return None


def _read_unembed_tensor(model_path: str, tied: bool) -> Optional[tuple[torch.Tensor, str]]:
    """The unembedding tensor straight from the checkpoint's safetensors, or None."""
    from safetensors import safe_open

    keys = _TIED_KEYS + _UNTIED_KEYS if tied else _UNTIED_KEYS
    index = _local_file(model_path, "model.safetensors.index.json")
    if index is not None:
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (OSError, ValueError, KeyError):
            return None
        key = next((k for k in keys if k in weight_map), None)
        shard = _local_file(model_path, weight_map[key]) if key else None
        candidates = [(key, shard)] if shard is not None else []
    else:
        single = _local_file(model_path, "model.safetensors")
        candidates = [(k, single) for k in keys] if single is not None else []
    for key, f in candidates:
        try:
            with safe_open(str(f), framework="pt") as handle:
                if key in handle.keys():
                    return handle.get_tensor(key), f"{key} of {f}"
        except Exception:  # a broken file: the full load reports it properly
            return None
    return None


def load_unembedding(model: str) -> Unembedding:
    """W_U of ``model`` (name, hub id, local dir or "demo"): from the checkpoint's safetensors
    when possible (the tied input embedding when ``tie_word_embeddings``), else a full load."""
    from transformers import AutoConfig

    from steer_cli.models import load_causal_lm, quiet_transformers, resolve_model

    quiet_transformers()
    path = resolve_model(model)
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError) as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise SteerError(f"cannot load model config from {path}: {first}") from None
    text = _text_config(config)
    num_layers = getattr(text, "num_hidden_layers", None)
    tied = bool(getattr(text, "tie_word_embeddings", getattr(config, "tie_word_embeddings", False)))
    found = _read_unembed_tensor(path, tied) if num_layers else None
    if found is not None:
        return Unembedding(found[0], int(num_layers), found[1])
    from steer_cli.patching.archs import locate

    lm = load_causal_lm(model, dtype="float32")
    located = locate(lm)
    return Unembedding(located.unembed.weight.detach(), located.num_layers, f"{type(lm).__name__} of {path}")


def unembed_matches(weight: torch.Tensor, expected: str) -> bool:
    """Whether the hash recorded in the vectors file is this matrix's (as stored, or rounded to
    the bf16/fp16 a run may have held it in)."""
    from steer_cli.vectors import unembed_sha256

    if unembed_sha256(weight) == expected:
        return True
    for dtype in (torch.bfloat16, torch.float16):
        if weight.dtype != dtype and unembed_sha256(weight.to(dtype)) == expected:
            return True
    return False


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
    from steer_cli.vectors import check_fits, load_vectors

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
        from steer_cli.models import load_tokenizer

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


@dataclass
class CompareResult:
    a: str
    b: str
    norms_a: list[float]
    norms_b: list[float]
    cosines: list[float]
    layers: list[int]  # layers where both vectors are non-zero
    notes: list[str] = field(default_factory=list)

    @property
    def mean_cosine(self) -> Optional[float]:
        vals = [self.cosines[i] for i in self.layers]
        return sum(vals) / len(vals) if vals else None

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": "steer-lens-compare", "format_version": 1, "a": self.a, "b": self.b,
            "layers": [{"layer": i, "norm_a": self.norms_a[i], "norm_b": self.norms_b[i], "cosine": self.cosines[i]}
                       for i in range(len(self.cosines))],
            "mean_cosine": self.mean_cosine,
        }


def compare_vectors(a: Optional[str | Path], b: str | Path, *, runs_dir: str | Path = "runs") -> CompareResult:
    """Per-layer cosine between two vectors files (two seeds, two checkpoints ...); no model needed."""
    from steer_cli.vectors import load_vectors

    path_a, note = find_vectors(a, runs_dir)
    path_b, _ = find_vectors(b, runs_dir)
    va, _ = load_vectors(path_a)
    vb, _ = load_vectors(path_b)
    if va.shape != vb.shape:
        raise SteerError(f"{path_a} is [{va.shape[0]}, {va.shape[1]}] but {path_b} is "
                         f"[{vb.shape[0]}, {vb.shape[1]}]; compare vectors of the same model")
    na, nb = vector_norms(va), vector_norms(vb)
    both = [i for i in range(va.shape[0]) if float(na[i]) > 0 and float(nb[i]) > 0]
    return CompareResult(str(path_a), str(path_b), [float(x) for x in na], [float(x) for x in nb],
                         [float(x) for x in layer_cosines(va, vb)], both, [note] if note else [])


# -- terminal output ---------------------------------------------------------------------------
def _quoted(text: str) -> str:
    return f"'{text}'"


def render_lens(result: LensResult, console: Any, show: int = 10) -> None:
    """One rich table per layer: promoted and suppressed tokens with their scores."""
    from rich.table import Table
    from rich.text import Text

    from steer_cli.terminal import print_table, print_text

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
            table.add_row(str(r + 1), Text(_quoted(t.token)), str(t.id), fmt.format(t.score),
                          Text(_quoted(b.token)), str(b.id), fmt.format(b.score))
        print_table(console, table)


def render_compare(result: CompareResult, console: Any) -> None:
    from rich.table import Table
    from rich.text import Text

    from steer_cli.terminal import print_table, print_text

    table = Table(title=Text(f"per-layer cosine: {result.a} vs {result.b}"), title_justify="left")
    for name in ("layer", "norm A", "norm B", "cosine"):
        table.add_column(name, justify="right")
    for i, c in enumerate(result.cosines):
        both = i in result.layers
        table.add_row(str(i), f"{result.norms_a[i]:.4g}", f"{result.norms_b[i]:.4g}", f"{c:+.4f}" if both else "—")
    print_table(console, table)
    mean = result.mean_cosine
    print_text(console, Text(f"mean cosine over {len(result.layers)} layer(s) with non-zero vectors: "
                       + (f"{mean:+.4f}" if mean is not None else "—")))

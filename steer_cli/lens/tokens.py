"""Showing vocabulary tokens readably: byte-level BPE pieces decoded, control bytes escaped."""

from __future__ import annotations

from typing import Any, Optional


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

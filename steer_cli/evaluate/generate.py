"""``steer generate``: completions of a few prompts from the base model and from trained vectors
(a run, a vectors file) or an adapter, side by side, at one or several steering strengths.

Prompts are rendered with the run's template (``render_prompt``) and stop at its stop set
(``completion_stop_ids``), as in training and evaluation; base and steered completions of a prompt
share its sampling seed, so at temperature 0 or with one seed the columns differ only by what the
vectors (or adapter) do. The result is a list of ``{prompt, base, steered}`` dicts (plus ``scale``
when several scales are asked for: one dict per prompt and scale).
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import torch

from steer_cli.data.datasets import load_train_set
from steer_cli.data.prompts import completion_stop_ids, render_prompt
from steer_cli.data.records import FieldMap
from steer_cli.errors import SteerError
from steer_cli.evaluate.models import EvalModels, load_target_vectors, model_dims, plain_adapter, vllm_factory
from steer_cli.models import load_tokenizer, resolve_model
from steer_cli.patching.strength import kept_layers, scaled_vectors
from steer_cli.rollout.base import SamplingSpec, content_text
from steer_cli.settings import Settings

_PROMPT_FIELDS = ("problem", "prompt", "question", "text", "input")


def read_prompt_file(path: str | Path) -> list[str]:
    """Prompts from a file: one per line, or JSONL (each line an object with a problem / prompt /
    question / text / input field, or a JSON string). Blank lines are skipped."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise SteerError(f"prompt file {path} does not exist")
    try:
        lines = [x for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
    except (OSError, UnicodeDecodeError) as err:
        raise SteerError(f"cannot read prompt file {path}: {err}") from None
    if not lines:
        raise SteerError(f"prompt file {path} holds no prompts")
    if path.suffix.lower() != ".jsonl" and not all(x.lstrip().startswith(("{", '"')) for x in lines):
        return lines
    prompts = []
    for n, line in enumerate(lines, 1):
        try:
            item = json.loads(line)
        except json.JSONDecodeError as err:
            raise SteerError(f"{path}, line {n}: not valid JSON ({err.msg}); write one prompt per line, or "
                             "JSONL with a problem/prompt field") from None
        if isinstance(item, dict):
            item = next((item[k] for k in _PROMPT_FIELDS if isinstance(item.get(k), str)), None)
        if not isinstance(item, str) or not item.strip():
            raise SteerError(f"{path}, line {n}: no prompt text (expected a string or an object with one of "
                             f"{', '.join(_PROMPT_FIELDS)})")
        prompts.append(item)
    return prompts


def dataset_prompts(settings: Settings, count: int) -> list[str]:
    """The first ``count`` problems of the run's training set (data.*)."""
    d = settings.data
    fields = None
    if d.problem_field or d.answer_field or d.answer_format:
        fields = FieldMap(problem=d.problem_field or "problem", answer=d.answer_field or "answer",
                          answer_kind=d.answer_format or "plain")
    problems, _ = load_train_set(d.dataset, data_dir=d.data_dir, fields=fields, split=d.split, limit=count)
    return [p.problem for p in problems]


@dataclass
class Generated:
    """Completion texts (stop token removed) per prompt: base, and steered per scale."""

    prompts: list[str]
    base: list[str]
    steered: dict[float, list[str]]

    def rows(self) -> list[dict[str, Any]]:
        """The JSON form: {prompt, base, steered} per prompt (and per scale, with "scale", when
        there are several)."""
        several = len(self.steered) > 1
        out = []
        for i, prompt in enumerate(self.prompts):
            for scale, texts in self.steered.items():
                row: dict[str, Any] = {"prompt": prompt}
                if several:
                    row["scale"] = scale
                row.update(base=self.base[i], steered=texts[i])
                out.append(row)
        return out


def generate(settings: Settings, target: Any, prompts: Sequence[str]) -> Generated:
    """Base and ``target`` (an ``evaluate.Target``: steering, lora or full) completions of
    ``prompts``; steering targets at each of ``inference.scale`` on ``inference.layers``."""
    if not prompts:
        raise SteerError("no prompts to complete; pass them as arguments or with --file")
    s, g, p = settings, settings.generate, settings.prompt
    scales = list(s.inference.scale)
    layers = s.inference.layers
    if target.setup != "steering" and (scales != [1.0] or layers is not None):
        raise SteerError(f"--scale and --layers apply to steering vectors; this is a {target.setup} "
                         f"{'adapter' if target.setup == 'lora' else 'checkpoint'}")
    vectors = _vectors(settings, target) if target.setup == "steering" else None
    if s.rollout.backend == "vllm":
        vllm_factory()  # a one-line error without vLLM, before loading anything
    tokenizer = load_tokenizer(s.model.name, revision=s.model.revision, trust_remote_code=s.model.trust_remote_code)
    stop_ids = completion_stop_ids(tokenizer, p.stop, s.model.name, revision=s.model.revision,
                                   trust_remote_code=s.model.trust_remote_code)
    ids = [render_prompt(tokenizer, x, p.template, system_prompt=p.system_prompt, fmt=p.format,
                         append_to=p.append_to) for x in prompts]
    sampling = SamplingSpec(n=1, temperature=g.temperature, top_p=g.top_p, max_new_tokens=g.max_new_tokens,
                            stop_token_ids=stop_ids, seed=g.seed)
    runner = _VLLMRunner(settings, target, vectors) if s.rollout.backend == "vllm" else _HFRunner(settings, target,
                                                                                                 vectors, tokenizer)
    with runner:
        def texts(backend: Any) -> list[str]:
            return [content_text(group[0], tokenizer) for group in backend.generate(ids, sampling)]

        with runner.base() as backend:
            base = texts(backend)
        steered = {}
        for scale in scales:
            with runner.trained(scale, layers) as backend:
                steered[scale] = texts(backend)
    return Generated(list(prompts), base, steered)


def _vectors(settings: Settings, target: Any) -> Any:
    dims = model_dims(settings)
    vectors = load_target_vectors(target.vectors, settings, dims)
    kept_layers(vectors.layers, settings.inference.layers, dims[0])  # a bad --layers fails before loading
    return vectors


class _HFRunner:
    """The base column and the trained ones from ``EvalModels`` (the evaluation's hf models: one
    base model, steered by hooks or adapted by peft, or a full checkpoint loaded in its place)."""

    def __init__(self, settings: Settings, target: Any, vectors: Any, tokenizer: Any) -> None:
        self.models, self.target, self.vectors = EvalModels(settings, tokenizer), target, vectors

    def __enter__(self) -> "_HFRunner":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.models = None

    def base(self) -> Any:
        return self.models.backend(replace(self.target, setup="base"), None)

    def trained(self, scale: float, layers: Optional[list[int]]) -> Any:
        subset = None if layers is None else tuple(layers)
        return self.models.backend(replace(self.target, scale=scale, layers=subset), self.vectors)


class _VLLMRunner:
    """One vLLM engine: steered vectors set to zero for the base column then to the scaled
    vectors; an adapter held back for the base column; a full checkpoint in a second engine."""

    def __init__(self, settings: Settings, target: Any, vectors: Any) -> None:
        self.s, self.target, self.vectors = settings, target, vectors
        self.engine: Any = None
        self._tmp: Any = None

    def __enter__(self) -> "_VLLMRunner":

        make = vllm_factory()
        t = self.target
        path = resolve_model(self.s.model.name)
        if t.setup == "lora":
            self._tmp = tempfile.TemporaryDirectory(prefix="steer-generate-lora-")
            adapter = plain_adapter(self.s, t.adapter, Path(self._tmp.name))
            self.engine = make(self.s, path, adapter=adapter)
        else:
            place = self.vectors.place if self.vectors is not None else "layer_output"
            self.engine = make(self.s, path, vectors=None, place=place)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.engine is not None:
            self.engine.close()
            self.engine = None
        if self._tmp is not None:
            self._tmp.cleanup()

    @contextlib.contextmanager
    def base(self) -> Iterator[Any]:
        if self.target.setup == "lora":
            with self.engine.without_lora():
                yield self.engine
            return
        if self.target.setup == "steering":
            self.engine.set_vectors(torch.zeros_like(self.vectors.tensor))
        yield self.engine

    @contextlib.contextmanager
    def trained(self, scale: float, layers: Optional[list[int]]) -> Iterator[Any]:
        t = self.target
        if t.setup == "steering":
            v = self.vectors
            kept = kept_layers(v.layers, layers, v.tensor.shape[0])
            self.engine.set_vectors(scaled_vectors(v.tensor, scale, kept))
            yield self.engine
        elif t.setup == "lora":
            yield self.engine
        else:
            self.engine.close()
            self.engine = vllm_factory()(self.s, str(t.weights))
            yield self.engine


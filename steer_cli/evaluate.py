"""``steer eval``: the paper's benchmark protocols, applied to a base model, base + vectors, base + a
LoRA adapter, or a training run's checkpoint; results written as JSON, never pickle.

Protocol (fact sheet section 4): samples per problem from the benchmark (32 for AIME/AMC, 1 else);
temperature 0 (greedy) for a base model and 1.0 / top_p 1.0 for a trained one unless set; greedy
forces one sample and one seed; metrics avg@k, pass@1, mean@k per seed, then mean ± std over seeds;
the paper's Average is the per-seed mean of the benchmarks' primary metrics. Prompts and grading
are those of training (``render_prompt``, ``rewards.Grader``).

Output directory of one evaluated thing ("target"):

    settings.yaml              the resolved settings
    target.json                what is evaluated and the protocol (compared on re-runs)
    seed-<s>/<benchmark>.jsonl one line per problem: id, problem, answer, prompt_length,
                               max_new_tokens, samples [{text, correct, length, stopped, has_answer}]
    summary.json               metrics per benchmark and seed, mean ± std, the Average (written last)

Each ``.jsonl`` is written whole (temporary file, then rename), so a finished (benchmark, seed) is
never torn; a re-run with the same protocol skips those and rebuilds ``summary.json``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import sys
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Optional, Sequence

from steer_cli import eval_metrics as M
from steer_cli.data.benchmarks import BENCHMARKS, Benchmark, HubSource, load_benchmark, resolve_benchmarks
from steer_cli.data.records import FieldMap, Problem
from steer_cli.errors import SteerError
from steer_cli.io import atomic_path, atomic_write_json, atomic_write_text, clear_dir
from steer_cli.settings import Layer, Settings, read_yaml_file

SUMMARY_KIND = "steer-eval"
TARGET_KIND = "steer-eval-target"
FORMAT_VERSION = 1
_CKPT_RE = re.compile(r"^(final|checkpoint-\d+)$")

# The demo's held-out split (steer_cli/demo/data/test.jsonl); not in "paper" or "all".
DEMO_BENCHMARK = Benchmark(
    "demo", "Demo", HubSource("steer-cli (built-in demo)", "test", FieldMap("problem", "answer")),
    FieldMap("problem", "answer"), samples=1, metric="pass@1",
)


# ============================================================================ what is evaluated

@dataclass
class Target:
    """One evaluated thing: a column of the results table and one output directory."""

    label: str  # "base", "final", "checkpoint-20", a vectors file's stem ...
    setup: str  # base | steering | lora | full
    model: str  # the base model (settings.model.name)
    output_dir: Path
    vectors: Optional[Path] = None
    adapter: Optional[Path] = None
    weights: Optional[Path] = None  # a full checkpoint's model directory
    run: Optional[Path] = None
    checkpoint: Optional[str] = None
    train_dataset: Optional[str] = None
    lora_rank: Optional[int] = None  # for lora: told apart in reports (the paper has r4 and r1 rows)

    @property
    def trained(self) -> bool:
        return self.setup != "base"


def _adapter_rank(adapter: Path) -> Optional[int]:
    try:
        rank = json.loads((adapter / "adapter_config.json").read_text(encoding="utf-8")).get("r")
    except (OSError, ValueError, AttributeError):
        return None
    return rank if isinstance(rank, int) else None


def is_training_run(path: Path) -> bool:
    """A ``steer train`` output directory: settings.yaml plus metrics or checkpoints."""
    if not (path / "settings.yaml").is_file():
        return False
    if (path / "metrics.jsonl").is_file():
        return True
    return any(c.is_dir() and _CKPT_RE.match(c.name) for c in path.iterdir())


def resolve_run(path: str | Path) -> tuple[Path, Path]:
    """``(run_dir, checkpoint_dir)`` from a run directory (its ``final/``, else its latest
    checkpoint), a checkpoint directory, or a file/folder inside one."""
    path = Path(path).expanduser()
    if not path.exists():
        raise SteerError(f"{path} does not exist; pass a training run directory (or one of its checkpoints), "
                         "or --model")
    if path.is_file():
        if path.name == "vectors.safetensors" and _CKPT_RE.match(path.parent.name):
            path = path.parent
        else:
            raise SteerError(f"{path} is a file, not a training run; evaluate a vectors file with "
                             "--model M --vectors FILE")
    if path.name in ("model", "adapter") and _CKPT_RE.match(path.parent.name):
        path = path.parent
    if _CKPT_RE.match(path.name) and is_training_run(path.parent):
        return path.parent, path
    if is_training_run(path):
        final = path / "final"
        if final.is_dir():
            return path, final
        ckpts = sorted((int(c.name.split("-")[1]), c) for c in path.iterdir()
                       if c.is_dir() and re.match(r"^checkpoint-\d+$", c.name))
        if ckpts:
            return path, ckpts[-1][1]
        raise SteerError(f"training run {path} has no final/ or checkpoint-N/ yet; wait for its first "
                         "checkpoint, or evaluate the base model with --model")
    if (path / "target.json").is_file():
        raise SteerError(f"{path} is an evaluation output, not a training run; pass the run it came from")
    raise SteerError(f"{path} is not a steer training run (no settings.yaml with metrics.jsonl or "
                     "checkpoints); pass a run directory, one of its checkpoint directories, or --model")


def run_settings_layer(run_dir: Path) -> Layer:
    """A run's settings.yaml as the lowest settings layer (its output keys dropped: they were
    the training run's)."""
    path = run_dir / "settings.yaml"
    values = read_yaml_file(path, "run settings")
    output = values.get("output")
    if isinstance(output, dict):
        values["output"] = {k: v for k, v in output.items() if k not in ("output_dir", "overwrite", "resume")}
    return Layer(values, f"run settings {path}")


def checkpoint_artifact(ckpt: Path) -> tuple[str, Path]:
    """What a checkpoint trained: ("steering", vectors file) | ("lora", adapter dir) | ("full", model dir)."""
    if (ckpt / "vectors.safetensors").is_file():
        return "steering", ckpt / "vectors.safetensors"
    if (ckpt / "adapter" / "adapter_config.json").is_file():
        return "lora", ckpt / "adapter"
    if (ckpt / "model" / "config.json").is_file():
        return "full", ckpt / "model"
    raise SteerError(f"checkpoint {ckpt} holds no vectors.safetensors, adapter/ or model/; "
                     "is it complete? Pass another checkpoint")


def base_model_of(*, vectors: Optional[Path] = None, adapter: Optional[Path] = None) -> str:
    """The base model a vectors file or adapter records, for ``--vectors``/``--adapter`` without ``--model``."""
    if vectors is not None:
        from steer_cli.vectors import load_vectors

        _, meta = load_vectors(vectors)
        name = meta.get("base_model")
        if not name:
            raise SteerError(f"{vectors} does not record its base model; pass --model")
        return str(name)
    if adapter is not None:
        config = Path(adapter) / "adapter_config.json"
        try:
            name = json.loads(config.read_text()).get("base_model_name_or_path")
        except (OSError, json.JSONDecodeError) as err:
            raise SteerError(f"cannot read {config} ({err}); pass a PEFT adapter directory") from None
        if not name:
            raise SteerError(f"{config} does not record its base model; pass --model")
        return str(name)
    raise SteerError("no model given; pass --model M")


def _file_label(path: Path, generic: str) -> str:
    stem = path.stem if path.is_file() else path.name
    return path.parent.name if stem == generic and path.parent.name else stem


def plan_targets(
    settings: Settings,
    *,
    run: Optional[Path] = None,
    checkpoint: Optional[Path] = None,
    vectors: Optional[Path] = None,
    adapter: Optional[Path] = None,
    with_base: Optional[bool] = None,
) -> list[Target]:
    """What ``steer eval`` evaluates, in table order (base first), each with its output directory.

    With a run: its checkpoint's vectors/adapter/model, plus the base model unless
    ``with_base`` is False. Otherwise ``settings.model.name``, with ``vectors`` or ``adapter``
    attached; the base model beside them only when ``with_base`` is True.
    """
    if vectors is not None and adapter is not None:
        raise SteerError("--vectors and --adapter together: evaluate one trained thing at a time")
    model = settings.model.name
    trained: Optional[Target] = None
    if run is not None:
        if vectors is not None or adapter is not None:
            raise SteerError("a training run already names what to evaluate; drop --vectors/--adapter, or drop RUN")
        assert checkpoint is not None
        setup, artifact = checkpoint_artifact(checkpoint)
        trained = Target(checkpoint.name, setup, model, Path(), run=run, checkpoint=checkpoint.name,
                         train_dataset=settings.data.dataset,
                         vectors=artifact if setup == "steering" else None,
                         adapter=artifact if setup == "lora" else None,
                         weights=artifact if setup == "full" else None,
                         lora_rank=settings.setup.lora.rank if setup == "lora" else None)
        with_base = True if with_base is None else with_base
    elif vectors is not None:
        vectors = Path(vectors).expanduser()
        if not vectors.exists():
            raise SteerError(f"vectors file {vectors} does not exist")
        trained = Target(_file_label(vectors, "vectors"), "steering", model, Path(), vectors=vectors,
                         train_dataset=_vectors_dataset(vectors))
    elif adapter is not None:
        adapter = Path(adapter).expanduser()
        if not (adapter / "adapter_config.json").is_file():
            raise SteerError(f"{adapter} is not a PEFT adapter directory (no adapter_config.json)")
        trained = Target(_file_label(adapter, "adapter"), "lora", model, Path(), adapter=adapter,
                         lora_rank=_adapter_rank(adapter))
    targets = []
    if trained is None or with_base:
        targets.append(Target("base", "base", model, Path()))
    if trained is not None:
        if trained.label == "base":
            trained.label = f"base-{trained.setup}"
        targets.append(trained)
    root = settings.output.output_dir
    for t in targets:
        if root:
            t.output_dir = Path(root) / t.label if len(targets) > 1 else Path(root)
        elif run is not None:
            t.output_dir = run / "eval" / t.label
        else:
            from steer_cli.models import model_slug

            t.output_dir = Path(settings.output.runs_dir) / "eval" / model_slug(model) / t.label
    return targets


def _vectors_dataset(path: Path) -> Optional[str]:
    from steer_cli.vectors import load_vectors

    _, meta = load_vectors(path)
    value = meta.get("dataset")
    return str(value) if value else None


# ============================================================================ benchmarks

@dataclass
class BenchmarkData:
    name: str  # key in summary.json and file name (<name>.jsonl)
    display: str
    default_samples: int
    problems: list[Problem]


def resolve_eval_benchmarks(spec: Sequence[str]) -> list[str]:
    """Registry names (``paper``/``all`` expanded), ``demo``, and file paths, in order, no repeats."""
    names: list[str] = []
    for raw in (p.strip() for s in spec for p in str(s).split(",")):
        if not raw:
            continue
        found = ["demo"] if raw.lower() == "demo" else resolve_benchmarks([raw])
        names.extend(n for n in found if n not in names)
    if not names:
        raise SteerError("no benchmarks given; use --benchmarks paper, all, or names such as aime24,gsm8k")
    return names


def _slug(text: str) -> str:
    return re.sub(r"[^\w.-]+", "_", text).strip("._") or "benchmark"


def load_eval_benchmark(name: str, *, data_dir: Optional[str], limit: Optional[int],
                        fields: Optional[FieldMap] = None) -> BenchmarkData:
    if name == "demo":
        from steer_cli import demo

        path = demo.DEMO_DATA_DIR / "test.jsonl"
        if not path.is_file():
            raise SteerError(f"the demo test split {path} is missing; reinstall steer-cli")
        problems = load_benchmark(path, limit=limit)
        return BenchmarkData("demo", DEMO_BENCHMARK.display_name, DEMO_BENCHMARK.samples, problems)
    if name in BENCHMARKS:
        bench = BENCHMARKS[name]
        problems = load_benchmark(name, data_dir, limit=limit)
        return BenchmarkData(name, bench.display_name, bench.samples, problems)
    path = Path(name)
    problems = load_benchmark(path, limit=limit, fields=fields)
    stem = path.stem if path.stem not in ("test", "train") else path.parent.name
    return BenchmarkData(_slug(stem), stem, 1, problems)


def load_benchmarks(settings: Settings, fields: Optional[FieldMap] = None) -> list[BenchmarkData]:
    names = resolve_eval_benchmarks(settings.eval.benchmarks)
    data_dir = settings.eval.data_dir
    if data_dir is not None and not Path(data_dir).is_dir():
        raise SteerError(f"data directory {data_dir} does not exist; pass an existing --data-dir "
                         "(holding <benchmark>/test.jsonl) or leave it out to load from the hub")
    out = [load_eval_benchmark(n, data_dir=data_dir, limit=settings.eval.limit, fields=fields) for n in names]
    seen: dict[str, str] = {}
    for b, raw in zip(out, names):
        if b.name in seen:
            raise SteerError(f"benchmarks {seen[b.name]} and {raw} would share the output file {b.name}.jsonl; "
                             "rename one of the files")
        seen[b.name] = raw
    return out


# ============================================================================ protocol

@dataclass
class Protocol:
    """How one target is evaluated, fully resolved."""

    temperature: float
    top_p: float
    seeds: list[int]
    max_new_tokens: Optional[int]  # None: each prompt gets the rest of max_seq_length
    max_seq_length: Optional[int]
    samples_setting: Optional[int]
    mean_k: int

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0

    def samples(self, bench: BenchmarkData) -> int:
        if self.greedy:
            return 1
        return self.samples_setting or bench.default_samples


def resolve_protocol(settings: Settings, target: Target) -> Protocol:
    e = settings.eval
    temperature = e.temperature if e.temperature is not None else (1.0 if target.trained else 0.0)
    seeds = list(dict.fromkeys(e.seeds))
    if not seeds:
        raise SteerError("no evaluation seeds; pass --seeds such as 0,1,2")
    if temperature == 0.0:
        seeds = seeds[:1]  # greedy decoding is deterministic: more seeds repeat the same answers
    # The paper evaluates in a context of eval.max_seq_length (4K Qwen2.5-Math/OLMo, 32K others):
    # each prompt may generate the rest of it. The training budget applies only when neither
    # eval.max_new_tokens nor eval.max_seq_length is set.
    max_new_tokens = e.max_new_tokens
    if max_new_tokens is None and e.max_seq_length is None:
        max_new_tokens = settings.rollout.max_new_tokens
    return Protocol(
        temperature=float(temperature), top_p=e.top_p, seeds=seeds, max_new_tokens=max_new_tokens,
        max_seq_length=e.max_seq_length, samples_setting=e.samples, mean_k=e.mean_k,
    )


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def identity(settings: Settings, target: Target, proto: Protocol, vectors: Optional["LoadedVectors"],
             fields: Optional[FieldMap]) -> dict[str, Any]:
    """Everything that changes a target's samples; a re-run into the same directory must match it."""
    p = settings.prompt
    ident: dict[str, Any] = {
        "model": settings.model.name, "revision": settings.model.revision, "dtype": settings.model.dtype,
        "setup": target.setup,
        "vectors_sha256": vectors.sha256 if vectors else None,
        "vectors_layers": list(vectors.layers) if vectors and vectors.layers is not None else None,
        "vectors_place": vectors.place if vectors else None,
        "adapter_sha256": _adapter_hash(target.adapter) if target.adapter else None,
        "weights": str(target.weights.resolve()) if target.weights else None,
        "backend": settings.rollout.backend,
        "template": p.template, "system_prompt": p.system_prompt, "format": p.format,
        "append_to": p.append_to, "stop": list(p.stop),
        "temperature": proto.temperature, "top_p": proto.top_p if not proto.greedy else None,
        "samples": None if proto.greedy else proto.samples_setting,
        "grade_truncated_box": settings.train.grade_truncated_box,
        "limit": settings.eval.limit, "max_new_tokens": proto.max_new_tokens,
        "max_seq_length": proto.max_seq_length,
        "fields": fields.describe() if fields else None,
    }
    return ident


def _adapter_hash(adapter: Path) -> str:
    weights = adapter / "adapter_model.safetensors"
    if weights.is_file():
        return _sha256_file(weights)
    return str(adapter.resolve())


# ============================================================================ vectors

@dataclass
class LoadedVectors:
    tensor: Any  # float32 [L, d]
    layers: Optional[tuple[int, ...]]
    place: str
    sha256: str


def model_dims(settings: Settings, name: Optional[str] = None) -> tuple[int, int]:
    """(num_layers, hidden_size) from the model's config, without loading weights."""
    from transformers import AutoConfig

    from steer_cli.models import quiet_transformers, resolve_model

    quiet_transformers()
    path = resolve_model(name or settings.model.name)
    try:
        config = AutoConfig.from_pretrained(path, revision=settings.model.revision,
                                            trust_remote_code=settings.model.trust_remote_code)
    except (OSError, ValueError) as err:
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise SteerError(f"cannot load model config from {path}: {first}") from None
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    layers = getattr(text, "num_hidden_layers", None) or getattr(text, "n_layer", None)
    hidden = getattr(text, "hidden_size", None) or getattr(text, "n_embd", None)
    if not layers or not hidden:
        raise SteerError(f"cannot tell the number of layers and hidden size of {path} from its config")
    return int(layers), int(hidden)


def load_target_vectors(path: Path, settings: Settings, dims: tuple[int, int]) -> LoadedVectors:
    """Read a vectors file and check it fits the model (both shapes named if not)."""
    import torch

    from steer_cli.vectors import check_fits, load_vectors

    tensor, meta = load_vectors(path)
    check_fits(tensor, dims[0], dims[1], source=path)
    layers = meta.get("layers")
    layer_ids = None if layers is None or list(layers) == list(range(dims[0])) else tuple(int(i) for i in layers)
    place = meta.get("place") or settings.setup.steering.place
    digest = hashlib.sha256(tensor.to(torch.float32).contiguous().numpy().tobytes()).hexdigest()
    return LoadedVectors(tensor, layer_ids, str(place), digest)


# ============================================================================ output directories

def _check_output_dir(out: Path, ident: dict[str, Any], overwrite: bool) -> str:
    """"new", "continue" or "overwrite"; raises (writing nothing) where the directory is not ours or
    holds another protocol's results."""
    if out.exists() and not out.is_dir():
        raise SteerError(f"output path {out} exists and is not a directory")
    if not out.exists() or not any(out.iterdir()):
        return "new"
    target_file = out / "target.json"
    if target_file.is_file():
        try:
            previous = json.loads(target_file.read_text()).get("identity", {})
        except (OSError, json.JSONDecodeError):
            previous = None
        if overwrite:
            return "overwrite"
        if previous is None:
            raise SteerError(f"{target_file} is unreadable; pass --overwrite to redo the evaluation in {out}")
        diffs = [k for k in sorted(set(previous) | set(ident)) if previous.get(k) != ident.get(k)]
        if diffs:
            shown = "; ".join(f"{k}: {previous.get(k)!r} -> {ident.get(k)!r}" for k in diffs[:10])
            raise SteerError(f"{out} holds an evaluation with other settings ({shown}); pass --overwrite to "
                             "redo it, or another --output-dir")
        return "continue"
    if is_training_run(out):
        raise SteerError(f"{out} is a training run, not an evaluation output; choose another --output-dir")
    if not (out / "settings.yaml").is_file():
        raise SteerError(f"output directory {out} exists and is not a steer evaluation (no settings.yaml); "
                         "refusing to write into it, choose another --output-dir")
    if not overwrite:
        raise SteerError(f"output directory {out} holds an incomplete evaluation; pass --overwrite to redo it")
    return "overwrite"


def _init_output_dir(out: Path, mode: str, settings: Settings, target_doc: dict[str, Any]) -> None:
    try:
        if mode == "overwrite":
            clear_dir(out)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "settings.yaml", settings.to_yaml())
        atomic_write_json(out / "target.json", target_doc)
    except OSError as err:
        raise SteerError(f"cannot write to output directory {out}: {err.strerror or err}") from None


def results_path(out: Path, bench: str, seed: int) -> Path:
    return out / f"seed-{seed}" / f"{bench}.jsonl"


def read_results(path: Path, problems: Sequence[Problem], samples: int) -> Optional[list[list[bool]]]:
    """The correctness matrix of a finished results file, or None if it is missing, torn or stale
    (other problems or another number of samples)."""
    if not path.is_file():
        return None
    try:
        lines = [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines() if x.strip()]
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    if len(lines) != len(problems):
        return None
    matrix = []
    for line, p in zip(lines, problems):
        s = line.get("samples") if isinstance(line, dict) else None
        if line.get("id") != p.id or not isinstance(s, list) or len(s) != samples:
            return None
        matrix.append([bool(x.get("correct")) for x in s])
    return matrix


# ============================================================================ generation

class _Models:
    """Loads models lazily and hands out one generation backend per target; the hf base model is
    shared by the base, steering and LoRA targets."""

    def __init__(self, settings: Settings, tokenizer: Any) -> None:
        self.s = settings
        self.tokenizer = tokenizer
        self._base: Any = None

    def _device(self) -> str:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"

    def _load(self, name: str) -> Any:
        from steer_cli.models import load_causal_lm

        m = self.s.model
        return load_causal_lm(name, dtype=m.dtype, device=self._device(), revision=m.revision,
                              trust_remote_code=m.trust_remote_code, attn_implementation=m.attn_implementation)

    def _base_model(self) -> Any:
        if self._base is None:
            self._base = self._load(self.s.model.name)
        return self._base

    @contextlib.contextmanager
    def backend(self, target: Target, vectors: Optional[LoadedVectors]) -> Iterator[Any]:
        if self.s.rollout.backend == "vllm":
            yield from self._vllm(target, vectors)
            return
        from steer_cli.rollout.hf import HFBackend

        batch = self.s.rollout.batch_prompts
        if target.setup == "base":
            yield HFBackend(self._base_model(), self.tokenizer, batch_prompts=batch)
        elif target.setup == "steering":
            from steer_cli.patching.steering import attach_steering

            assert vectors is not None
            handle = attach_steering(self._base_model(), vectors.tensor, layers=vectors.layers,
                                     place=vectors.place, trainable=False)
            try:
                yield HFBackend(self._base_model(), self.tokenizer, batch_prompts=batch)
            finally:
                handle.remove()
        elif target.setup == "lora":
            from peft import PeftModel

            model = PeftModel.from_pretrained(self._base_model(), str(target.adapter), is_trainable=False)
            model.eval()
            self._base = None  # the adapter's layers now live in the base model's modules
            try:
                yield HFBackend(model, self.tokenizer, batch_prompts=batch)
            finally:
                del model
        else:
            assert target.weights is not None
            self._base = None  # two full models need not share memory
            model = self._load(str(target.weights))
            try:
                yield HFBackend(model, self.tokenizer, batch_prompts=batch)
            finally:
                del model

    def _vllm(self, target: Target, vectors: Optional[LoadedVectors]) -> Iterator[Any]:
        from steer_cli.models import resolve_model

        make_eval_backend = vllm_factory()

        tensor = None
        if vectors is not None:
            tensor = vectors.tensor.clone()
            if vectors.layers is not None:  # rows of unsteered layers are never applied
                keep = set(vectors.layers)
                for i in range(tensor.shape[0]):
                    if i not in keep:
                        tensor[i].zero_()
        model_path = str(target.weights) if target.weights else resolve_model(self.s.model.name)
        with tempfile.TemporaryDirectory(prefix="steer-eval-lora-") as tmp:
            adapter = self._plain_adapter(target.adapter, Path(tmp)) if target.adapter else None
            backend = make_eval_backend(self.s, model_path, vectors=tensor, adapter=adapter,
                                        place=vectors.place if vectors is not None else "layer_output")
            try:
                yield backend
            finally:
                close = getattr(backend, "close", None)
                if close:
                    close()

    def _plain_adapter(self, adapter: Path, tmp: Path) -> str:
        """vLLM puts an adapter on the original weights. Training writes PiSSA adapters converted
        for that; an unconverted one (saved as trained, for W - B0 A0) is converted here, on a CPU
        copy of the base model. (The hf backend loads either kind as it is: peft reruns PiSSA.)"""
        from steer_cli.patching.setups import convert_pissa_adapter, is_pissa_adapter

        if not is_pissa_adapter(adapter):
            return str(adapter)
        from steer_cli.models import load_causal_lm

        m = self.s.model
        base = load_causal_lm(m.name, dtype=m.dtype, device="cpu", revision=m.revision,
                              trust_remote_code=m.trust_remote_code)
        return str(convert_pissa_adapter(base, adapter, tmp / "adapter"))


def vllm_factory() -> Callable[..., Any]:
    """``steer_cli.rollout.factory.make_eval_backend(settings, model_path, vectors=, adapter=)``."""
    try:
        from steer_cli.rollout.factory import make_eval_backend
    except ImportError as err:
        raise SteerError(f"vLLM backend not available ({err}); use --backend hf") from None
    return make_eval_backend


class _Reporter:
    """Progress: a rich bar per (benchmark, seed) on a terminal, plain lines otherwise."""

    def __init__(self, interactive: Optional[bool] = None) -> None:
        from rich.console import Console

        self.console = Console(stderr=True, highlight=False, soft_wrap=True)  # log lines stay whole
        self.interactive = (sys.stderr.isatty() if interactive is None else interactive)
        self._progress: Any = None

    def say(self, message: str) -> None:
        if self._progress is not None:
            self._progress.console.print(message)
        else:
            self.console.print(message)

    def __enter__(self) -> "_Reporter":
        if self.interactive:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                      TimeElapsedColumn(), console=self.console, transient=True)
            self._progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def task(self, description: str, total: int) -> Callable[[int], None]:
        if self._progress is None:
            self.say(f"{description}: {total} problems ...")
            return lambda n: None
        task_id = self._progress.add_task(description, total=total)

        def advance(n: int) -> None:
            self._progress.update(task_id, advance=n)

        return advance

    def finish_task(self) -> None:
        if self._progress is not None:
            for t in list(self._progress.tasks):
                self._progress.remove_task(t.id)


def generate_benchmark(
    backend: Any, grader: Any, prompts: Sequence[Sequence[int]], problems: Sequence[Problem],
    sampling: Any, *, max_new_tokens: Optional[int], max_seq_length: Optional[int], chunk: int,
    advance: Callable[[int], None] = lambda n: None,
) -> list[dict[str, Any]]:
    """Sample, grade and return one results line per problem. Prompts go in chunks seeded by their
    index (the backend's ``first_index``), so results do not depend on the chunk size; each prompt's
    budget is its own (``completion_budgets``: max_seq_length minus its length, capped by
    max_new_tokens when set), whatever else shares its chunk."""
    from steer_cli.rollout.base import completion_budgets

    lines: list[dict[str, Any]] = []
    for start in range(0, len(prompts), chunk):
        part = prompts[start:start + chunk]
        budgets = completion_budgets([len(p) for p in part], max_new_tokens, max_seq_length)
        groups = backend.generate(part, replace(sampling, max_new_tokens=max(budgets), budgets=budgets),
                                  first_index=start)
        items = [(c.text, problems[start + i].answer) for i, g in enumerate(groups) for c in g]
        grades = iter(grader.grade(items))
        for i, group in enumerate(groups):
            p = problems[start + i]
            samples = []
            for c in group:
                g = next(grades)
                samples.append({"text": c.text, "correct": bool(g.correct), "length": len(c.token_ids),
                                "stopped": bool(c.stopped), "has_answer": bool(g.has_answer)})
            lines.append({"index": start + i, "id": p.id, "problem": p.problem, "answer": p.answer,
                          "prompt_length": len(part[i]), "max_new_tokens": budgets[i], "samples": samples})
        advance(len(part))
    return lines


def write_results(path: Path, lines: Sequence[dict[str, Any]]) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            for line in lines:
                f.write(json.dumps(line, ensure_ascii=False) + "\n")


# ============================================================================ summary

def _abs(path: Optional[Path]) -> Optional[str]:
    """Absolute paths in result files: they are read from other directories (``steer report``)."""
    return str(path.resolve()) if path is not None else None


def build_summary(target: Target, settings: Settings, proto: Protocol, benches: Sequence[BenchmarkData],
                  matrices: dict[tuple[str, int], list[list[bool]]]) -> dict[str, Any]:
    """summary.json of one target (format in notes/apis.md)."""
    benchmarks: dict[str, Any] = {}
    primary: dict[str, dict[str, float]] = {}
    for b in benches:
        n = proto.samples(b)
        metric = M.primary_metric(n)
        result = M.benchmark_summary({s: matrices[(b.name, s)] for s in proto.seeds}, metric, proto.mean_k)
        benchmarks[b.name] = {"display": b.display, "metric": metric, "samples": n, "problems": len(b.problems),
                              **result}
        primary[b.name] = {seed: M.primary_value(v, metric) for seed, v in result["per_seed"].items()}
    return {
        "kind": SUMMARY_KIND, "format_version": FORMAT_VERSION,
        "model": target.model, "setup": target.setup, "lora_rank": target.lora_rank,
        "vectors": _abs(target.vectors), "adapter": _abs(target.adapter), "run": _abs(target.run),
        "checkpoint": target.checkpoint, "train_dataset": target.train_dataset,
        "temperature": proto.temperature, "top_p": proto.top_p, "seeds": list(proto.seeds),
        "benchmarks": benchmarks,
        "average": M.paper_average(primary),
        # Beyond the shared format: the table's column name and the rest of the protocol.
        "label": target.label,
        "weights": _abs(target.weights),
        "greedy": proto.greedy,
        "max_new_tokens": proto.max_new_tokens, "max_seq_length": proto.max_seq_length,
        "mean_k": proto.mean_k, "backend": settings.rollout.backend,
    }


# ============================================================================ the command

@dataclass
class _Plan:
    target: Target
    proto: Protocol
    vectors: Optional[LoadedVectors]
    ident: dict[str, Any]
    mode: str  # new | continue | overwrite
    done: dict[tuple[str, int], list[list[bool]]] = field(default_factory=dict)
    todo: list[tuple[BenchmarkData, int]] = field(default_factory=list)


def _plan(settings: Settings, targets: Sequence[Target], benches: Sequence[BenchmarkData],
          fields: Optional[FieldMap]) -> list[_Plan]:
    """Check every target (vectors shapes, output directories) and find finished work; writes nothing."""
    dims: Optional[tuple[int, int]] = None
    plans = []
    for t in targets:
        vectors = None
        if t.vectors is not None:
            dims = dims or model_dims(settings)
            vectors = load_target_vectors(t.vectors, settings, dims)
        proto = resolve_protocol(settings, t)
        ident = identity(settings, t, proto, vectors, fields)
        plan = _Plan(t, proto, vectors, ident, _check_output_dir(t.output_dir, ident, settings.output.overwrite))
        for b in benches:
            for seed in proto.seeds:
                found = None
                if plan.mode == "continue":
                    found = read_results(results_path(t.output_dir, b.name, seed), b.problems, proto.samples(b))
                if found is not None:
                    plan.done[(b.name, seed)] = found
                else:
                    plan.todo.append((b, seed))
        plans.append(plan)
    return plans


def evaluate(
    settings: Settings,
    targets: Sequence[Target],
    *,
    fields: Optional[FieldMap] = None,
    interactive: Optional[bool] = None,
) -> list[dict[str, Any]]:
    """Evaluate each target on every benchmark and seed; returns the summaries (also written).

    Everything is checked (benchmarks, data, vectors shapes, output directories, prompts) before
    anything is written; finished (benchmark, seed) files from an earlier run with the same
    protocol are kept and reported as skipped.
    """
    from steer_cli.rollout.base import SamplingSpec

    benches = load_benchmarks(settings, fields)
    plans = _plan(settings, targets, benches, fields)
    p = settings.prompt
    prompts: dict[str, list[list[int]]] = {}
    stop_ids: tuple[int, ...] = ()
    models = None
    if any(plan.todo for plan in plans):  # a re-run with nothing left to do skips loading transformers
        if settings.rollout.backend == "vllm":
            vllm_factory()  # fail before writing anything
        from steer_cli.data.prompts import completion_stop_ids, render_prompt
        from steer_cli.models import load_tokenizer

        tokenizer = load_tokenizer(settings.model.name, revision=settings.model.revision,
                                   trust_remote_code=settings.model.trust_remote_code)
        stop_ids = completion_stop_ids(tokenizer, p.stop, settings.model.name, revision=settings.model.revision,
                                       trust_remote_code=settings.model.trust_remote_code)
        prompts = {b.name: [render_prompt(tokenizer, x.problem, p.template, system_prompt=p.system_prompt,
                                          fmt=p.format, append_to=p.append_to) for x in b.problems]
                   for b in benches}
        models = _Models(settings, tokenizer)
    hf = settings.rollout.backend == "hf"
    chunk = settings.rollout.batch_prompts if hf else max(256, settings.rollout.batch_prompts)

    reporter = _Reporter(interactive)
    summaries = []
    grader = None
    with contextlib.ExitStack() as stack:
        stack.enter_context(reporter)
        for plan in plans:
            t, proto = plan.target, plan.proto
            _init_output_dir(t.output_dir, plan.mode, settings, {
                "kind": TARGET_KIND, "format_version": FORMAT_VERSION, "label": t.label,
                "setup": t.setup, "model": t.model,
                "vectors": _abs(t.vectors), "adapter": _abs(t.adapter), "run": _abs(t.run),
                "checkpoint": t.checkpoint,
                "identity": plan.ident,
            })
            matrices = dict(plan.done)
            for b in benches:
                for seed in proto.seeds:
                    if (b.name, seed) in plan.done:
                        reporter.say(f"{t.label} · {b.display} · seed {seed}: finished earlier, skipped")
            if plan.todo:
                assert models is not None
                if grader is None:
                    from steer_cli import rewards

                    grader = stack.enter_context(rewards.Grader(
                        num_workers=settings.train.grader_workers, timeout=settings.train.grade_timeout,
                        template=p.template, truncated_box_fallback=settings.train.grade_truncated_box))
                with models.backend(t, plan.vectors) as backend:
                    for b, seed in plan.todo:
                        n = proto.samples(b)
                        sampling = SamplingSpec(n=n, temperature=proto.temperature, top_p=proto.top_p,
                                                top_k=-1, stop_token_ids=stop_ids, seed=seed)
                        label = f"{t.label} · {b.display} · seed {seed} · {n} sample{'s' if n > 1 else ''}"
                        started = time.perf_counter()
                        advance = reporter.task(label, len(b.problems))
                        lines = generate_benchmark(backend, grader, prompts[b.name], b.problems, sampling,
                                                   max_new_tokens=proto.max_new_tokens,
                                                   max_seq_length=proto.max_seq_length, chunk=chunk,
                                                   advance=advance)
                        reporter.finish_task()
                        write_results(results_path(t.output_dir, b.name, seed), lines)
                        matrix = [[s["correct"] for s in line["samples"]] for line in lines]
                        matrices[(b.name, seed)] = matrix
                        metric = M.primary_metric(n)
                        value = M.primary_value(M.seed_metrics(matrix, proto.mean_k), metric)
                        reporter.say(f"{label}: {metric} {100 * value:.1f} "
                                     f"({time.perf_counter() - started:.1f}s)")
            summary = build_summary(t, settings, proto, benches, matrices)
            atomic_write_json(t.output_dir / "summary.json", summary)
            reporter.say(f"{t.label}: results in {t.output_dir}")
            summaries.append(summary)
    return summaries


# ============================================================================ table

def _cell(entry: dict[str, Any], seeds: int) -> str:
    text = f"{100 * entry['mean']:.1f}"
    return text + (f" ± {100 * entry['std']:.1f}" if seeds > 1 else "")


def describe_protocol(summary: dict[str, Any]) -> str:
    if summary["greedy"]:
        return "greedy (T=0: one sample and one seed, decoding is deterministic)"
    seeds = summary["seeds"]
    tail = f"mean ± std over seeds {','.join(map(str, seeds))}" if len(seeds) > 1 else f"seed {seeds[0]}"
    return f"T={float(summary['temperature'])}, top_p={float(summary['top_p'])}, {tail}"


def results_table(summaries: Sequence[dict[str, Any]]) -> Any:
    """A rich table (rows = benchmarks + Average, columns = evaluated targets, accuracy x100) and a
    line per target saying how it was sampled."""
    from rich.table import Table

    table = Table(title="steer eval: accuracy (%)")
    table.add_column("Benchmark")
    names: list[str] = []
    for s in summaries:
        names.extend(n for n in s["benchmarks"] if n not in names)
    metrics_per_bench = {n: {s["benchmarks"][n]["metric"] for s in summaries if n in s["benchmarks"]} for n in names}
    same_metric = all(len(v) == 1 for v in metrics_per_bench.values())
    if same_metric:
        table.add_column("Metric")
    for s in summaries:
        table.add_column(s["label"], justify="right")
    for n in names:
        display = next(s["benchmarks"][n]["display"] for s in summaries if n in s["benchmarks"])
        row = [display] + ([next(iter(metrics_per_bench[n]))] if same_metric else [])
        for s in summaries:
            entry = s["benchmarks"].get(n)
            if entry is None:
                row.append("-")
            else:
                cell = _cell(entry, len(s["seeds"]))
                row.append(cell if same_metric else f"{cell} [dim]{entry['metric']}[/dim]")
        table.add_row(*row)
    if len(names) > 1:
        table.add_section()
        row = ["Average"] + ([""] if same_metric else [])
        row += [_cell(s["average"], len(s["seeds"])) for s in summaries]
        table.add_row(*row)
    from rich.console import Group
    from rich.text import Text

    notes = [Text(f"{s['label']}: {describe_protocol(s)}", style="dim") for s in summaries]
    return Group(table, *notes)

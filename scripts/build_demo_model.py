"""Build the demo's data splits, tokenizer and tiny Qwen2 model from scratch, on CPU.

    python scripts/build_demo_model.py            # writes steer_cli/demo/{data,model}/

Everything is seeded: the same machine (same torch build, same thread count) rebuilds the same
files. The model is pretrained on worked solutions of the demo task (steer_cli/demo/task.py) in
the exact prompt format training uses (the ``qwen_math`` template), with a small fraction of the
solutions putting the answer in ``\\boxed{}``: the arithmetic is learned well, boxing stays rare.
At the end it samples the test split greedily and at temperature 1.0 and prints what it measured,
checks that ``from_pretrained`` gives back the same tokenizer and logits, and lists the files.
About 6 minutes on 2 idle cores (1000 steps of 64 examples); see steer_cli/demo/README.md.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import sys
import time
from pathlib import Path

import torch

# Unbuffered progress lines when piped to a log.
sys.stdout.reconfigure(line_buffering=True)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from steer_cli.data.prompts import render_prompt, render_prompt_text  # noqa: E402
from steer_cli.demo import DEMO_DATA_DIR, DEMO_MODEL_DIR  # noqa: E402
from steer_cli.demo.task import demo_splits, make_problem, problem_key, solution_text  # noqa: E402
from steer_cli.io import atomic_dir, atomic_write_text  # noqa: E402

CORPUS_SEED, TORCH_SEED, EVAL_SEED = 3, 4, 5  # the splits' seeds live in steer_cli/demo/task.py
P_BOXED = 0.12  # share of pretraining solutions that box the answer
VOCAB_SIZE = 512  # an upper bound: the trainer stops once every word of the corpus is one token

QWEN2_PRETOKENIZE_REGEX = (  # transformers.models.qwen2.tokenization_qwen2.PRETOKENIZE_REGEX
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"""
    r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

MODEL_CONFIG = dict(
    hidden_size=128,
    intermediate_size=512,
    num_hidden_layers=4,
    num_attention_heads=2,  # head_dim 64: vLLM's CPU attention supports it
    num_key_value_heads=2,
    max_position_embeddings=256,
    rope_theta=10000.0,
    tie_word_embeddings=True,
    rms_norm_eps=1e-6,
    use_sliding_window=False,
)


def write_jsonl(path: Path, rows: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def build_tokenizer(texts: list[str]):
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    # Qwen2's own pipeline (transformers 5 rebuilds exactly this for any qwen2 checkpoint, ignoring
    # tokenizer.json's pre-tokenizer): NFC, Qwen2's split regex (digits one per token), byte-level.
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        chat_template=CHAT_TEMPLATE,
        model_max_length=MODEL_CONFIG["max_position_embeddings"],
        clean_up_tokenization_spaces=False,
    )


def shared_prefix(tokenizer) -> list[int]:
    """Token ids every prompt starts with: the system turn and the opening of the user turn."""
    text = render_prompt_text(tokenizer, "\x00", "qwen_math")
    return list(tokenizer(text[: text.index("\x00")], add_special_tokens=False)["input_ids"])


def encode_example(tokenizer, problem: dict, boxed: bool, prefix: list[int]) -> tuple[list[int], int]:
    """Token ids of prompt + solution + <|im_end|> after the shared prefix, and how many of them
    belong to the prompt (the loss covers the rest)."""
    prompt = render_prompt(tokenizer, problem["problem"], "qwen_math")
    if prompt[: len(prefix)] != prefix:
        raise AssertionError(f"prompt does not start with the shared prefix: {problem['problem']!r}")
    completion = tokenizer(solution_text(problem, boxed), add_special_tokens=False)["input_ids"]
    ids = prompt + completion + [tokenizer.eos_token_id]
    return ids[len(prefix) :], len(prompt) - len(prefix)


def make_batch(examples: list[tuple[list[int], int]], pad_id: int):
    width = max(len(ids) for ids, _ in examples)
    input_ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), -100, dtype=torch.long)
    for row, (ids, n_prompt) in enumerate(examples):
        input_ids[row, : len(ids)] = torch.tensor(ids)
        labels[row, n_prompt : len(ids)] = torch.tensor(ids[n_prompt:])
    return input_ids, labels  # right padding: a causal model never looks at it


def prefixed_logits(model, prefix: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Logits for ``input_ids`` after the shared ``prefix``, which is computed once per batch
    (with gradients) and broadcast through the KV cache: the same numbers as running the
    concatenation, for a fraction of the cost."""
    cache = model.model(input_ids=prefix[None], use_cache=True).past_key_values
    for layer in cache.layers:
        layer.keys = layer.keys.expand(input_ids.shape[0], -1, -1, -1)
        layer.values = layer.values.expand(input_ids.shape[0], -1, -1, -1)
    return model(input_ids=input_ids, past_key_values=cache, use_cache=False).logits


def pretrain(model, tokenizer, corpus: list[tuple[list[int], int]], prefix: list[int], args, probe=()):
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01, betas=(0.9, 0.98))
    # Batches in corpus order (the corpus is already shuffled); grouping by length to save padding
    # made batches non-i.i.d. (length tracks template and carry) and slowed learning badly.
    batches = [corpus[i : i + args.batch] for i in range(0, len(corpus), args.batch)]
    steps = len(batches)
    warmup = max(1, steps // 20)
    prefix_t = torch.tensor(prefix)

    def lr_at(step: int) -> float:
        if step < warmup:
            return args.lr * (step + 1) / warmup
        progress = (step - warmup) / max(1, steps - warmup)
        return args.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))

    model.train()
    t0 = time.time()
    for step, examples in enumerate(batches):
        input_ids, labels = make_batch(examples, tokenizer.pad_token_id)
        for group in opt.param_groups:
            group["lr"] = lr_at(step)
        logits = prefixed_logits(model, prefix_t, input_ids)
        loss = torch.nn.functional.cross_entropy(
            logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 50 == 0 or step == steps - 1:
            elapsed = time.time() - t0
            print(f"  step {step:5d}  loss {loss.item():.4f}  lr {lr_at(step):.2e}  {elapsed:6.1f}s")
        if probe and args.eval_every and (step + 1) % args.eval_every == 0:
            model.eval()
            greedy = measure(sample(model, tokenizer, [r["problem"] for r in probe], 0.0, 0), probe)
            print(f"    greedy on {len(probe)} test problems: {greedy}", flush=True)
            model.train()
    model.eval()


BOXED = re.compile(r"\\boxed\{([^{}]*)\}")


@torch.no_grad()
def sample(model, tokenizer, problems: list[str], temperature: float, seed: int, batch: int = 200):
    """Completions (special tokens dropped) for each problem, left-padded batched generation."""
    torch.manual_seed(seed)
    out = []
    for start in range(0, len(problems), batch):
        prompts = [render_prompt(tokenizer, p, "qwen_math") for p in problems[start : start + batch]]
        width = max(map(len, prompts))
        ids = torch.full((len(prompts), width), tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(prompts), width), dtype=torch.long)
        for row, p in enumerate(prompts):
            ids[row, width - len(p) :] = torch.tensor(p)
            mask[row, width - len(p) :] = 1
        if temperature > 0:
            kwargs = dict(do_sample=True, temperature=temperature, top_p=1.0, top_k=0)
        else:
            kwargs = dict(do_sample=False)
        gen = model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=64,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **kwargs,
        )
        out += tokenizer.batch_decode(gen[:, width:], skip_special_tokens=True)
    return out


def measure(completions: list[str], rows: list[dict]) -> dict:
    """Share boxed, share whose stated answer is right (boxed or not), share graded correct."""
    boxed = arith = graded = 0
    for text, row in zip(completions, rows):
        boxes = BOXED.findall(text)
        said = re.findall(r"The answer is (?:\\boxed\{|\*\*)?(\d+)", text)
        boxed += bool(boxes)
        arith += bool(said) and said[-1] == row["answer"]
        graded += bool(boxes) and boxes[-1].strip() == row["answer"]
    n = len(rows)
    return {"p_boxed": boxed / n, "arithmetic": arith / n, "accuracy": graded / n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--eval-every", type=int, default=0, help="print greedy test accuracy every N steps")
    ap.add_argument("--out", type=Path, default=DEMO_MODEL_DIR)
    ap.add_argument("--data-out", type=Path, default=DEMO_DATA_DIR)
    args = ap.parse_args()

    from transformers import GenerationConfig, Qwen2Config, Qwen2ForCausalLM

    t_start = time.time()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    train, test = demo_splits()
    test_keys = {problem_key(p) for p in test}
    for name, split in (("test", test), ("train", train)):
        rows = [{"problem": p["problem"], "answer": p["answer"]} for p in split]
        write_jsonl(args.data_out / f"{name}.jsonl", rows)

    rng = random.Random(CORPUS_SEED)
    n_corpus = args.steps * args.batch
    corpus_problems = [make_problem(rng, test_keys) for _ in range(n_corpus)]
    corpus_boxed = [rng.random() < P_BOXED for _ in range(n_corpus)]

    # The tokenizer learns its merges from the same rendering it will be fed.
    render = lambda problem: render_prompt_text(_ChatML, problem, "qwen_math")  # noqa: E731
    special = re.compile("|".join(re.escape(t) for t in SPECIAL_TOKENS))
    tok_texts = [
        piece
        for p, b in zip(corpus_problems[:20000], corpus_boxed)
        for piece in special.split(render(p["problem"]) + solution_text(p, b))
        if piece
    ]
    tokenizer = build_tokenizer(tok_texts)
    if tokenizer.apply_chat_template(
        [{"role": "user", "content": "x"}], tokenize=False, add_generation_prompt=True
    ) != _ChatML.apply_chat_template([{"role": "user", "content": "x"}]):
        raise AssertionError("the chat template and its stand-in disagree")
    prefix = shared_prefix(tokenizer)
    corpus = [encode_example(tokenizer, p, b, prefix) for p, b in zip(corpus_problems, corpus_boxed)]
    lengths = [len(ids) - n for ids, n in corpus]
    print(f"tokenizer: {len(tokenizer)} tokens")
    print(f"corpus: {n_corpus} examples, {sum(corpus_boxed) / n_corpus:.3f} boxed")
    print(f"prompt: {len(prefix)} shared + ~{corpus[0][1]} tokens; reply {min(lengths)}-{max(lengths)}")

    torch.manual_seed(TORCH_SEED)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **MODEL_CONFIG,
    )
    model = Qwen2ForCausalLM(config).float()
    print(f"model: {sum(p.numel() for p in model.parameters()):,} parameters")
    t_train = time.time()
    pretrain(model, tokenizer, corpus, prefix, args, probe=test[:100])
    t_train = time.time() - t_train

    greedy = measure(sample(model, tokenizer, [r["problem"] for r in test], 0.0, EVAL_SEED), test)
    t1 = measure(sample(model, tokenizer, [r["problem"] for r in test], 1.0, EVAL_SEED), test)
    print(f"test, greedy: {greedy}")
    print(f"test, T=1.0:  {t1}")

    model.generation_config = GenerationConfig(
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None
    )
    with atomic_dir(args.out) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp, save_jinja_files=False)
        _normalize_tokenizer_config(tmp / "tokenizer_config.json")
        check_reload(tmp, model, tokenizer, [r["problem"] for r in test])
    for path in [args.out, args.data_out]:
        path.chmod(0o755)
    for path in [*args.out.iterdir(), *args.data_out.iterdir()]:
        path.chmod(0o644)
        print(f"  {path.relative_to(path.parents[1])}: {path.stat().st_size:,} bytes")
    print(f"pretraining {t_train:.0f}s, total {time.time() - t_start:.0f}s")


def check_reload(path: Path, model, tokenizer, problems: list[str]) -> None:
    """What ``from_pretrained`` gives back encodes and computes exactly what was trained (transformers
    5 rebuilds a qwen2 checkpoint's tokenizer pipeline rather than reading tokenizer.json's)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    loaded_tok = AutoTokenizer.from_pretrained(path)
    prompts = [render_prompt(tokenizer, p, "qwen_math") for p in problems]
    if [render_prompt(loaded_tok, p, "qwen_math") for p in problems] != prompts:
        raise AssertionError("the reloaded tokenizer encodes prompts differently")
    loaded = AutoModelForCausalLM.from_pretrained(path).eval()
    ids = torch.tensor([prompts[0]])
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=ids).logits, model(input_ids=ids).logits, rtol=0, atol=0)


class _ChatML:
    """Stands in for the tokenizer before it exists: renders the same chat template."""

    chat_template = CHAT_TEMPLATE
    bos_token = None

    @staticmethod
    def apply_chat_template(messages, tokenize=False, add_generation_prompt=True):
        text = "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages)
        return text + ("<|im_start|>assistant\n" if add_generation_prompt else "")


def _normalize_tokenizer_config(path: Path) -> None:
    """Name Qwen2's tokenizer class: what transformers 5 loads for any qwen2 checkpoint anyway,
    and in 4.x the fast class that reads tokenizer.json as it is."""
    cfg = json.loads(path.read_text())
    cfg["tokenizer_class"] = "Qwen2Tokenizer"
    atomic_write_text(path, json.dumps(cfg, indent=2, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()

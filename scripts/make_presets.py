"""Write the paper's presets under steer_cli/presets/ from the tables below (the fact sheet's).

Run `python scripts/make_presets.py` after editing a table; the YAML files are committed.
Sources: ../shared/reference/reference-implementation.md sections 1a-1c, the paper's Table 6, and
the reference's configs and helpers/merge_vectors_from_layers.py (single-layer learning rates).
tests/test_preset_budgets.py checks the resulting lengths, generations and evaluation protocol
against the reference's config files (tests/fixtures/reference_budgets.yaml).
"""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "steer_cli" / "presets"

# model dir: (hub id, max_seq_length, template, stop token, eval max_seq_length, grad ckpt always)
MODELS = {
    "qwen2.5-math-1.5b": ("Qwen/Qwen2.5-Math-1.5B", 4096, "qwen_math", "<|im_end|>", 4096, False),
    "qwen2.5-math-7b": ("Qwen/Qwen2.5-Math-7B", 4096, "qwen_math", "<|im_end|>", 4096, False),
    "qwen2.5-1.5b": ("Qwen/Qwen2.5-1.5B", 8192, "qwen_math", "<|im_end|>", 32768, False),
    "qwen2.5-1.5b-instruct": ("Qwen/Qwen2.5-1.5B-Instruct", 8192, "qwen_math", "<|im_end|>", 32768, False),
    "qwen2.5-7b": ("Qwen/Qwen2.5-7B", 8192, "qwen_math", "<|im_end|>", 32768, False),
    "qwen2.5-7b-instruct": ("Qwen/Qwen2.5-7B-Instruct", 8192, "qwen_math", "<|im_end|>", 32768, False),
    "qwen2.5-14b": ("Qwen/Qwen2.5-14B", 8192, "qwen_math", "<|im_end|>", 32768, True),
    "llama3.1-8b": ("meta-llama/Llama-3.1-8B", 8192, "r1", "<|end_of_text|>", 32768, False),
    "llama3.1-8b-instruct": ("meta-llama/Llama-3.1-8B-Instruct", 8192, "qwen_math", "<|eot_id|>", 32768, False),
    "olmo2-7b-sft": ("allenai/OLMo-2-1124-7B-SFT", 4096, "qwen_math", "<|endoftext|>", 4096, False),
}
# Eval lengths with no eval config in the reference code (14B, Instruct): we use 32768.

# DeepScaleR (fact sheet 1b): setup -> (lr, num_generations, lora init)
DEEPSCALER = {
    "qwen2.5-math-1.5b": {"steering": (1e-3, 16), "lora": (1e-4, 16), "lora-r1": (1e-4, 16), "full": (2e-6, 16)},
    "qwen2.5-math-7b": {"steering": (1e-3, 16), "lora": (1e-4, 16), "lora-r1": (1e-4, 16), "full": (1e-6, 16)},
    "qwen2.5-1.5b": {"steering": (1e-3, 64), "lora": (1e-4, 16, "pissa"), "lora-r1": (5e-4, 16, "pissa"), "full": (1e-6, 64)},
    "qwen2.5-1.5b-instruct": {"steering": (1e-3, 64), "lora": (1e-4, 16, "pissa"), "lora-r1": (5e-4, 16, "pissa"), "full": (1e-6, 64)},
    "qwen2.5-7b": {"steering": (1e-3, 16), "lora": (1e-4, 16, "pissa"), "lora-r1": (5e-4, 16, "pissa"), "full": (1e-6, 16)},
    "qwen2.5-7b-instruct": {"steering": (1e-3, 16), "lora": (1e-4, 16, "pissa"), "lora-r1": (5e-4, 16, "pissa"), "full": (1e-6, 16)},
    "qwen2.5-14b": {"steering": (5e-4, 16), "lora": (5e-4, 16, "pissa"), "lora-r1": (5e-4, 16, "pissa"), "full": (1e-6, 16)},
    "llama3.1-8b": {"steering": (3e-4, 64), "lora": (1e-4, 32), "lora-r1": (5e-4, 64), "full": (1e-6, 64)},
    "llama3.1-8b-instruct": {"steering": (8e-5, 16), "lora": (5e-5, 16), "lora-r1": (1e-4, 16), "full": (1e-6, 16)},
    "olmo2-7b-sft": {"steering": (5e-5, 16), "lora": (1e-4, 16), "lora-r1": (3e-4, 16), "full": (1e-6, 16)},
}
NOTES = {
    ("llama3.1-8b", "lora"): "The reference config uses the qwen_math template for this one setup.",
    ("llama3.1-8b-instruct", "lora-r1"): ("LR 1e-4: the run behind Table 1 (the reference's results path\n"
                                           "# reads seed-0_lr-0.0001); its config file says 8e-5."),
    ("olmo2-7b-sft", "*"): "The reference OLMo2 configs leave the template unset and add the vector as a down_proj bias.",
}

# Single-layer steering LRs (the lr-... of each run path in helpers/merge_vectors_from_layers.py):
# model dir -> {layer: lr}, one run per layer.
QWEN_MATH_7B_LR = {0: 3e-3, 2: 5e-3, 18: 3e-2, 19: 5e-2, 20: 5e-2}
QWEN_MATH_7B_LR.update({i: 7e-3 for i in (1, 3, 4, 5, 6, 7)})
QWEN_MATH_7B_LR.update({i: 1e-2 for i in (*range(8, 18), 23, 24)})
QWEN_MATH_7B_LR.update({i: 0.1 for i in (21, 22, 25, 26, 27)})
LLAMA_8B_IT_LR = {i: 5e-4 for i in range(4)}
LLAMA_8B_IT_LR.update({i: 7e-4 for i in range(4, 8)})
LLAMA_8B_IT_LR.update({i: 1e-3 for i in (8, 9, 10, 12, 14)})
LLAMA_8B_IT_LR.update({i: 2e-3 for i in (11, 13, *range(15, 25))})
LLAMA_8B_IT_LR.update({i: 5e-3 for i in (25, 26, 27, 28, 31)})
LLAMA_8B_IT_LR.update({i: 7e-3 for i in (29, 30)})
SINGLE_LAYER_LR = {"qwen2.5-math-7b": QWEN_MATH_7B_LR, "llama3.1-8b-instruct": LLAMA_8B_IT_LR}

# GSM8K / MATH (paper Table 6: lr, num_generations; fact sheet 1c: epochs, micro-batch).
TABLE6 = {
    "qwen2.5-1.5b": {"n": 64, "epochs": 3, "micro": 8, "gsm8k": {"full": 2e-5, "steering": 5e-4, "lora-r1": 5e-4, "lora": 5e-4},
                     "math": {"full": 2e-5, "steering": 5e-4, "lora-r1": 5e-4, "lora": 5e-4}},
    "qwen2.5-math-1.5b": {"n": 16, "epochs": 3, "micro": 8, "gsm8k": {"full": 2e-5, "steering": 1e-3, "lora-r1": 5e-4, "lora": 5e-4},
                          "math": {"full": 2e-5, "steering": 1e-3, "lora-r1": 5e-4, "lora": 5e-4}},
    "llama3.1-8b": {"n": 64, "epochs": 2, "micro": 1, "gsm8k": {"full": 5e-6, "steering": 5e-4, "lora-r1": 1e-4, "lora": 1e-4},
                    "math": {"full": 5e-6, "steering": 5e-4, "lora-r1": 1e-4, "lora": 1e-4}},
    "llama3.1-8b-instruct": {"n": 16, "epochs": 3, "micro": 1, "gsm8k": {"full": 1e-6, "steering": 2e-4, "lora-r1": 6e-4, "lora": 1e-4},
                             "math": {"full": 1e-6, "steering": 2e-4, "lora-r1": 3e-4, "lora": 3e-4}},
}

SETUPS = {
    "steering": "setup:\n  kind: steering\n",
    "lora": "setup:\n  kind: lora\n  lora:\n    rank: 4\n    alpha: 4\n    dropout: 0.0\n",
    "lora-r1": "setup:\n  kind: lora\n  lora:\n    rank: 1\n    alpha: 1\n    dropout: 0.0\n",
    "full": "setup:\n  kind: full\nmodel:\n  gradient_checkpointing: true\n",
}
SETUP_FLAG = {"steering": "steering", "lora": "lora", "lora-r1": "lora", "full": "full"}

# The built-in demo, one preset per setup: setup -> learning rate that learns the demo task in its
# 50 steps (measured with `steer train --setup S` on CPU; README's tour has the figures).
DEMO_LR = {"steering": 3e-2, "lora": 1e-3, "full": 1e-4}
DEMO_SETUPS = {
    "steering": "steering vectors alone",
    "lora": "a rank-4 LoRA on every down_proj",
    "full": "full fine-tuning of all weights",
}


def fmt(x: float) -> str:
    # YAML 1.1 (PyYAML) reads 1e-4 as a string; 1.0e-4 is a float.
    mantissa, exp = f"{x:.1e}".split("e")
    return f"{mantissa}e{int(exp)}" if x < 0.01 else repr(x)


def write(name: str, text: str) -> None:
    path = ROOT / f"{name}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def write_demo() -> None:
    write("_base/demo", """\
# The built-in demo's settings, shared by demo/demo/<setup> (used through include:).
# A tiny Qwen2 model shipped in the package learns to put its (mostly right) arithmetic answers in
# \\boxed{} - minutes on a laptop CPU.
model:
  name: demo
  dtype: float32
data:
  dataset: demo
prompt:
  template: qwen_math
  stop: ["<|im_end|>"]
rollout:
  backend: hf
  num_generations: 8
  max_new_tokens: 64
  batch_prompts: 8
train:
  prompts_per_step: 8
  max_steps: 50
  warmup_ratio: 0.0
  micro_batch_size: 64
  save_every: 25
  grader_workers: 2
  grade_timeout: 5.0
eval:
  benchmarks: [demo]
  samples: 1
  temperature: 1.0
  seeds: [0]
  max_new_tokens: 64
""")
    for setup, what in DEMO_SETUPS.items():
        cmd = "steer train" + ("" if setup == "steering" else f" --setup {setup}")
        block = "setup:\n  kind: full\n" if setup == "full" else SETUPS[setup]  # no gradient checkpointing
        write(f"demo/demo/{setup}", f"# {cmd}\n# The built-in demo with {what}.\n"
              f"include: _base/demo\n{block}train:\n  lr: {fmt(DEMO_LR[setup])}\n")
    write("demo", """\
# steer train
# The built-in demo (the same as demo/demo/steering): a tiny Qwen2 model shipped in the package
# learns, with steering vectors alone, to box its arithmetic answers - minutes on a laptop CPU.
include: demo/demo/steering
""")


def main() -> None:
    write_demo()
    write("_base/paper", """\
# Shared by every paper preset: the reference implementation's RL settings (fact sheet 1a).
# Used through include:, e.g. `steer train --preset qwen2.5-math-7b/deepscaler/steering`.
model:
  dtype: bfloat16
rollout:
  temperature: 1.0
  top_p: 1.0
  top_k: -1
train:
  schedule: constant_with_warmup
  warmup_ratio: 0.03
  max_grad_norm: 2.0
  weight_decay: 0.0
  adam_beta1: 0.9
  adam_beta2: 0.999
  adam_eps: 1.0e-8
  reward_correct: 1.0
  reward_wrong: -1.0
  keep_last: 5
eval:
  benchmarks: [paper]
  top_p: 1.0
  seeds: [0, 1, 2]
""")
    write("_base/deepscaler", """\
# DeepScaleR training (fact sheet 1a): 128 prompts per step (16 per GPU on 8 trainer GPUs),
# one epoch (314 steps), RLOO advantages, no KL, checkpoints every sixth of the run.
# Used through include:, e.g. `steer train --preset qwen2.5-math-7b/deepscaler/steering`.
include: _base/paper
data:
  dataset: deepscaler
train:
  prompts_per_step: 128
  epochs: 1
  advantage: rloo
  kl_coef: 0.0
  micro_batch_size: 1
""")
    write("_base/gsm8k_math", """\
# GSM8K / MATH training (fact sheet 1c, paper Table 6): group-mean advantage without std scaling,
# per-token k3 KL with coefficient 0.01, 1024-token sequences, mean@8 evaluation.
# Used through include:, after _models/<model> (its DeepScaleR lengths give way to these), e.g.
# `steer train --preset qwen2.5-1.5b/gsm8k/steering`.
# The number of prompts per step is not recorded; 128 matches the DeepScaleR runs.
# The reference evaluates inside training, under the training config: 1024-token context, T = 1.0,
# 8 samples per problem on 500 problems drawn with seed 0 (subsample_ds_seed); the Base row of
# Table 4 is its step-0 evaluation, so the base model is sampled exactly like the trained ones.
include: _base/paper
train:
  prompts_per_step: 128
  advantage: mean
  kl_coef: 0.01
rollout:
  max_seq_length: 1024
  max_new_tokens: 1024
eval:
  benchmarks: [gsm8k, math500]
  temperature: 1.0
  samples: 8
  limit: 500
  subset_seed: 0
  max_seq_length: 1024
  mean_k: 8
""")
    for setup, text in SETUPS.items():
        write(f"_base/setup-{setup}", f"# Setup block for {setup} presets (used through include:).\n" + text)
    for model, (hub, max_seq, template, stop, eval_len, ckpt) in MODELS.items():
        body = f"""\
# {hub}: model, prompt and lengths (fact sheet 1b, 4). Used through include:, e.g.
# `steer train --preset {model}/deepscaler/steering`.
model:
  name: {hub}
"""
        if ckpt:
            body += "  gradient_checkpointing: true  # the reference turns it on for every 14B setup\n"
        body += f"""\
prompt:
  template: {template}
  stop: ["{stop}"]
rollout:
  max_seq_length: {max_seq}
  max_new_tokens: {max_seq}
eval:
  max_seq_length: {eval_len}
"""
        if model.startswith("olmo2"):
            body += "setup:\n  steering:\n    place: down_proj_bias  # the reference's OLMo2 runs\n"
        write(f"_models/{model}", body)
    for model, setups in DEEPSCALER.items():
        for setup, spec in setups.items():
            lr, n = spec[0], spec[1]
            init = spec[2] if len(spec) > 2 else None
            name = f"{model}/deepscaler/{setup}"
            note = NOTES.get((model, setup)) or NOTES.get((model, "*"))
            cmd = (f"steer train --model {MODELS[model][0]} --setup {SETUP_FLAG[setup]}"
                   if setup != "lora-r1" else f"steer train --preset {name}")
            text = f"# {cmd}\n"
            text += f"# {MODELS[model][0]} on DeepScaleR, {setup}: fact sheet 1b.\n"
            if note:
                text += f"# {note}\n"
            text += f"include: [_base/deepscaler, _models/{model}, _base/setup-{setup}]\n"
            text += f"train:\n  lr: {fmt(lr)}\nrollout:\n  num_generations: {n}\n"
            if (model, setup) == ("llama3.1-8b", "lora"):
                text += "prompt:\n  template: qwen_math\n"
            if init:
                text += f"setup:\n  lora:\n    init: {init}\n"
            write(name, text)
    for model, lrs in SINGLE_LAYER_LR.items():
        for layer, lr in sorted(lrs.items()):
            name = f"{model}/deepscaler/steering-layer-{layer}"
            write(name, f"""\
# steer train --preset {name}
# One steering vector, at layer {layer} of {MODELS[model][0]} only; the learning rate is
# helpers/merge_vectors_from_layers.py's. Stack the {len(lrs)} single-layer runs with `steer merge`.
include: {model}/deepscaler/steering
setup:
  steering:
    layers: [{layer}]
train:
  lr: {fmt(lr)}
""")
    for model, spec in TABLE6.items():
        for dataset in ("gsm8k", "math"):
            for setup, lr in spec[dataset].items():
                name = f"{model}/{dataset}/{setup}"
                cmd = (f"steer train --model {MODELS[model][0]} --dataset {dataset} --setup {SETUP_FLAG[setup]}"
                       if setup != "lora-r1" else f"steer train --preset {name}")
                write(name, f"""\
# {cmd}
# {MODELS[model][0]} on {dataset.upper()}, {setup}: paper Table 6 (lr, generations), fact sheet 1c.
include: [_models/{model}, _base/gsm8k_math, _base/setup-{setup}]
data:
  dataset: {dataset}
train:
  lr: {fmt(lr)}
  epochs: {spec['epochs']}
  micro_batch_size: {spec['micro']}
rollout:
  num_generations: {spec['n']}
""")


if __name__ == "__main__":
    main()

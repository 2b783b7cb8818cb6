"""Generation uses exactly the settings steer resolved, whatever the model's generation_config.json
says: transformers fills settings from that file (4.50-4.57 every one equal to its global default
when the file was written by >= 4.50, 5.x every one left None)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from peft import LoraConfig, get_peft_model
from tiny_models import save_tiny_lm

from steer_cli.models import load_causal_lm, load_tokenizer
from steer_cli.rollout.base import SampleRequest, SamplingSpec
from steer_cli.rollout.hf import HFBackend

GREEDY = SamplingSpec(n=2, temperature=0.0, max_new_tokens=10, seed=3)
SAMPLED = SamplingSpec(n=2, temperature=1.0, top_p=0.95, max_new_tokens=10, seed=3)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """The same weights twice: one with a neutral generation config, one with a hostile one."""
    root = tmp_path_factory.mktemp("genconfig")
    neutral = save_tiny_lm(root / "neutral")
    hostile = root / "hostile"
    shutil.copytree(neutral, hostile)
    own = json.loads((neutral / "generation_config.json").read_text())
    own.update(do_sample=True, temperature=0.05, top_p=0.5, repetition_penalty=10.0,
               # left None by steer's config: transformers 5 fills it from the model's
               suppress_tokens=list(range(64, 256)),
               # >= 4.50: 4.50-4.57 then prefer the file's values over their global defaults
               transformers_version="4.56.0")
    (hostile / "generation_config.json").write_text(json.dumps(own))
    return neutral, hostile


def _outputs(model, tokenizer):
    backend = HFBackend(model, tokenizer, batch_prompts=2)
    prompts = [tokenizer.encode("hello there"), tokenizer.encode("abc")]
    out = {spec.temperature: [[c.token_ids for c in group] for group in backend.generate(prompts, spec)]
           for spec in (GREEDY, SAMPLED)}
    requests = [SampleRequest(prompt=tuple(p), seed=11 + i, max_new_tokens=8, group=i) for i, p in enumerate(prompts)]
    out["stream"] = [c.token_ids for _, c in backend.stream_samples(requests, SAMPLED)]
    return out


def test_a_hostile_generation_config_changes_nothing(checkpoints):
    neutral, hostile = checkpoints
    tokenizer = load_tokenizer(str(neutral))
    expected = _outputs(load_causal_lm(str(neutral), dtype="float32"), tokenizer)
    model = load_causal_lm(str(hostile), dtype="float32")
    own = model.generation_config
    assert own.do_sample and own.repetition_penalty == 10.0  # the file was read
    assert _outputs(model, tokenizer) == expected
    # the model keeps its own config (a checkpoint saved from it writes the file it came with)
    assert model.generation_config is own


def test_a_peft_wrapped_model_is_neutralised_too(checkpoints):
    neutral, hostile = checkpoints
    tokenizer = load_tokenizer(str(neutral))
    lora = LoraConfig(r=2, target_modules=["q_proj", "v_proj"])  # B = 0: the base model's outputs
    torch.manual_seed(0)
    expected = _outputs(get_peft_model(load_causal_lm(str(neutral), dtype="float32"), lora).eval(), tokenizer)
    torch.manual_seed(0)
    assert _outputs(get_peft_model(load_causal_lm(str(hostile), dtype="float32"), lora).eval(),
                    tokenizer) == expected

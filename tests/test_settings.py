"""Settings: the precedence chain, validation that names the culprit, presets, reload."""

from __future__ import annotations

import pytest
import yaml

from steer_cli.cli.common import settings_from_cli
from steer_cli.errors import SteerError
from steer_cli.presets import find_preset, load_preset_values, preset_info, preset_layer, preset_names
from steer_cli.settings import Layer, Settings, all_keys, build_settings, diff_settings, field_doc, load_settings_file


def test_precedence_defaults_preset_config_set_flags(tmp_path):
    """Each layer overrides the one below it, and only the keys it sets."""
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({
        "train": {"lr": 0.02, "prompts_per_step": 7, "seed": 5},
        "rollout": {"num_generations": 3},
    }))
    s = settings_from_cli(
        preset="qwen2.5-math-7b/deepscaler/steering",
        config=config,
        sets=["train.prompts_per_step=9", "train.seed=6"],
        flags={"train.seed": 11, "model.name": None},
    )
    assert s.train.kl_coef == 0.0                       # default, untouched by every layer
    assert s.train.warmup_ratio == 0.03                 # preset (include: _base/paper)
    assert s.model.name == "Qwen/Qwen2.5-Math-7B"       # preset (a flag of None is "not given")
    assert s.rollout.max_seq_length == 4096             # preset (_models/qwen2.5-math-7b)
    assert s.train.lr == 0.02                           # config over preset (1e-3)
    assert s.rollout.num_generations == 3               # config over preset (16)
    assert s.train.prompts_per_step == 9                # --set over config
    assert s.train.seed == 11                           # flag over --set and config
    assert Settings().train.lr == 1e-3                  # the defaults themselves
    assert s.preset == "qwen2.5-math-7b/deepscaler/steering"


def test_all_errors_reported_with_their_source(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("train:\n  lrr: 1.0\n  micro_batch_size: 0\n")
    with pytest.raises(SteerError) as err:
        settings_from_cli(preset=None, config=config, sets=["rollout.num_generations=0"],
                          flags={"train.lr": -1.0}, infer_preset=False)
    msg = str(err.value)
    assert "unknown setting train.lrr (config file" in msg and "did you mean train.lr?" in msg
    assert "train.lr = -1.0 (--lr)" in msg and "greater than 0" in msg
    assert "rollout.num_generations = 0 (--set rollout.num_generations=0)" in msg
    assert "train.micro_batch_size = 0 (config file" in msg
    assert msg.count("\n") == 4  # a header line and one line per problem


def test_unknown_preset_key_is_named(tmp_path, monkeypatch):
    import steer_cli.presets as presets

    (tmp_path / "bad.yaml").write_text("# steer train --preset bad\nrollout:\n  temprature: 0.5\n")
    monkeypatch.setattr(presets, "PRESETS_DIR", tmp_path)
    with pytest.raises(SteerError, match=r"rollout.temprature \(preset bad\); did you mean rollout.temperature"):
        build_settings([presets.preset_layer("bad")])


def test_every_preset_loads_and_validates():
    names = preset_names()
    assert len(names) >= 100
    for name in names:
        s = build_settings([preset_layer(name)])
        assert s.preset == name
        info = preset_info(name)
        assert info.command.startswith("steer "), name
        if not name.startswith("demo"):
            assert s.rollout.max_seq_length, name


def test_paper_presets_match_the_fact_sheet():
    def get(name):
        return build_settings([preset_layer(name)])

    s = get("qwen2.5-math-7b/deepscaler/steering")
    assert (s.train.lr, s.rollout.num_generations, s.train.prompts_per_step) == (1e-3, 16, 128)
    assert (s.train.advantage, s.train.max_grad_norm, s.train.schedule) == ("rloo", 2.0, "constant_with_warmup")
    assert s.prompt.stop == ["<|im_end|>"] and s.rollout.max_seq_length == 4096
    s = get("llama3.1-8b/deepscaler/steering")
    assert (s.train.lr, s.rollout.num_generations, s.prompt.template) == (3e-4, 64, "r1")
    assert get("llama3.1-8b/deepscaler/lora").prompt.template == "qwen_math"
    s = get("qwen2.5-1.5b/deepscaler/lora-r1")
    assert (s.setup.kind, s.setup.lora.rank, s.setup.lora.init, s.train.lr) == ("lora", 1, "pissa", 5e-4)
    s = get("qwen2.5-14b/deepscaler/steering")
    assert s.model.gradient_checkpointing and s.train.lr == 5e-4
    s = get("qwen2.5-math-7b/deepscaler/steering-layer-21")
    assert s.setup.steering.layers == [21] and s.train.lr == 0.1
    s = get("llama3.1-8b-instruct/gsm8k/lora-r1")
    assert (s.train.lr, s.train.advantage, s.train.kl_coef, s.train.epochs) == (6e-4, "mean", 0.01, 3)
    assert get("olmo2-7b-sft/deepscaler/full").train.lr == 1e-6
    assert get("olmo2-7b-sft/deepscaler/steering").setup.steering.place == "down_proj_bias"


def test_preset_is_found_from_model_dataset_setup():
    assert find_preset("Qwen/Qwen2.5-Math-7B", None, None) == "qwen2.5-math-7b/deepscaler/steering"
    assert find_preset("Qwen2.5-Math-7B", "deepscaler", "full") == "qwen2.5-math-7b/deepscaler/full"
    assert find_preset("/models/Llama-3.1-8B-Instruct", "gsm8k", "lora") == "llama3.1-8b-instruct/gsm8k/lora"
    assert find_preset(None, None, None) == "demo/demo/steering"
    assert find_preset(None, None, "lora") == "demo/demo/lora"  # --setup alone keeps the demo
    assert find_preset("demo", "demo", "full") == "demo/demo/full"
    assert find_preset(None, "gsm8k", None) is None
    assert find_preset("some/unknown-model", None, None) is None
    with pytest.raises(SteerError, match="no preset 'qwen2.5-7b/gsm8k/steering'"):
        find_preset("Qwen/Qwen2.5-7B", "gsm8k", "steering")


def test_unknown_preset_suggests_a_name():
    with pytest.raises(SteerError, match="did you mean qwen2.5-math-7b/deepscaler/steering"):
        preset_layer("qwen2.5-math-7b/deepscaler/stering")


def test_include_cycle_is_an_error(tmp_path, monkeypatch):
    import steer_cli.presets as presets

    (tmp_path / "a.yaml").write_text("include: b\n")
    (tmp_path / "b.yaml").write_text("include: a\n")
    monkeypatch.setattr(presets, "PRESETS_DIR", tmp_path)
    with pytest.raises(SteerError, match="cycle: a -> b -> a"):
        load_preset_values("a")


def test_settings_yaml_round_trip(tmp_path):
    s = build_settings([preset_layer("qwen2.5-1.5b/math/steering"), Layer({"train": {"seed": 4}}, "x")])
    path = tmp_path / "settings.yaml"
    path.write_text(s.to_yaml())
    assert load_settings_file(path).to_dict() == s.to_dict()


def test_diff_ignores_runtime_keys():
    a = build_settings([])
    b = build_settings([Layer({"train": {"lr": 0.5, "grader_workers": 7}, "output": {"resume": True}}, "x")])
    assert diff_settings(a, b) == [("train.lr", 1e-3, 0.5)]


def test_every_field_has_a_description():
    missing = [k for k in all_keys() if not field_doc(k)]
    assert missing == []


def test_set_values_are_parsed_as_yaml():
    s = settings_from_cli(preset=None, config=None, infer_preset=False, flags={},
                          sets=["setup.steering.layers=[1, 2]", "train.max_grad_norm=null", "prompt.stop=['</s>']"])
    assert s.setup.steering.layers == [1, 2] and s.train.max_grad_norm is None and s.prompt.stop == ["</s>"]
    with pytest.raises(SteerError, match="key=value"):
        settings_from_cli(preset=None, config=None, sets=["train.lr"], flags={}, infer_preset=False)


def test_bad_config_file_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(SteerError, match="not valid YAML"):
        settings_from_cli(preset=None, config=bad, sets=None, flags={}, infer_preset=False)
    with pytest.raises(SteerError, match="does not exist"):
        settings_from_cli(preset=None, config=tmp_path / "nope.yaml", sets=None, flags={}, infer_preset=False)
    listy = tmp_path / "list.yaml"
    listy.write_text("- 1\n- 2\n")
    with pytest.raises(SteerError, match="must hold a mapping"):
        settings_from_cli(preset=None, config=listy, sets=None, flags={}, infer_preset=False)

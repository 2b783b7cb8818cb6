"""Single-layer steering presets: one per layer, each with the learning rate of the reference's run
(the lr-... in helpers/merge_vectors_from_layers.py's paths, copied here), and otherwise the
model's all-layer steering preset."""

from __future__ import annotations

import pytest

from steer_cli.presets import preset_layer
from steer_cli.settings import build_settings, diff_settings

# .../steering-layer-{i}/seed-{s}_lr-{lr}/... in layer order, as written in the reference's file.
REFERENCE_LR = {
    "qwen2.5-math-7b": ["0.003", "0.007", "0.005", *["0.007"] * 5, *["0.01"] * 10, "0.03", "0.05", "0.05",
                        "0.1", "0.1", "0.01", "0.01", "0.1", "0.1", "0.1"],
    "llama3.1-8b-instruct": [*["0.0005"] * 4, *["0.0007"] * 4, "0.001", "0.001", "0.001", "0.002", "0.001",
                             "0.002", "0.001", *["0.002"] * 10, *["0.005"] * 4, "0.007", "0.007", "0.005"],
}
NUM_LAYERS = {"qwen2.5-math-7b": 28, "llama3.1-8b-instruct": 32}


@pytest.mark.parametrize("model", sorted(REFERENCE_LR))
def test_one_preset_per_layer_with_the_reference_learning_rate(model):
    lrs = REFERENCE_LR[model]
    assert len(lrs) == NUM_LAYERS[model]
    whole = build_settings([preset_layer(f"{model}/deepscaler/steering")])
    for layer, lr in enumerate(lrs):
        s = build_settings([preset_layer(f"{model}/deepscaler/steering-layer-{layer}")])
        assert s.setup.steering.layers == [layer] and s.train.lr == float(lr), (model, layer)
        changed = {key for key, _, _ in diff_settings(whole, s)}
        assert changed == {"setup.steering.layers", "train.lr"}, (model, layer)


def test_llama_instruct_lora_r1_is_the_table1_run():
    s = build_settings([preset_layer("llama3.1-8b-instruct/deepscaler/lora-r1")])
    assert (s.setup.lora.rank, s.train.lr) == (1, 1e-4)  # results path seed-0_lr-0.0001, not the config's 8e-5

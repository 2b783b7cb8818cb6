"""Vector banks on the steering hooks: each row of a batch steered by its own entry of a
[R, layers, hidden] bank (several runs over one model), and the gradient sink that gives each
entry its gradient in a fixed order."""

from __future__ import annotations

import pytest
import torch
from tiny_models import make_model, sample_ids

from steer_cli.errors import SteerError
from steer_cli.patching.steering import attach_steering, bank_rows_gradient


def _bank(model, entries=3, seed=5):
    g = torch.Generator().manual_seed(seed)
    return 0.5 * torch.randn(entries, model.config.num_hidden_layers, model.config.hidden_size, generator=g)


def _logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("place", ["layer_output", "down_proj_bias"])
def test_each_row_gets_its_own_entry(place):
    model = make_model("qwen2")
    ids = sample_ids(batch=4)
    bank = _bank(model)
    rows = torch.tensor([2, 0, 2, 1])
    handle = attach_steering(model, place=place, trainable=False)
    with handle.using_bank(bank, rows):
        got = _logits(model, ids)
    assert handle._bank is None  # restored
    for b, entry in enumerate(rows.tolist()):
        # the whole batch steered by that entry alone (the same batch shape): row b agrees bit for bit
        handle.set(bank[entry])
        assert torch.equal(got[b], _logits(model, ids)[b])
    handle.remove()


def test_layer_mask_leaves_other_layers_unsteered():
    model = make_model("llama")
    ids = sample_ids(batch=2)
    bank = _bank(model, entries=2)
    mask = torch.tensor([[True, False, False], [False, False, True]])
    handle = attach_steering(model, trainable=False)
    with handle.using_bank(bank, torch.tensor([0, 1]), layer_mask=mask):
        got = _logits(model, ids)
    for entry in (0, 1):
        alone = bank[entry].clone()
        alone[~mask[entry]] = 0
        handle.set(alone)
        assert torch.equal(got[entry], _logits(model, ids)[entry])
    handle.remove()


def test_bank_shape_and_row_index_errors():
    model = make_model("qwen2")
    handle = attach_steering(model, trainable=False)
    with pytest.raises(SteerError, match="entries, 3, 32"):
        handle.set_bank(torch.zeros(2, 4, 32))
    handle.set_bank(_bank(model, entries=2))
    with pytest.raises(SteerError, match="bank entries"):
        handle.set_row_index(torch.tensor([0, 2]))
    handle.set_row_index(torch.tensor([0]))
    with pytest.raises(SteerError, match="batch has 2 rows"):
        _logits(model, sample_ids(batch=2))
    handle.remove()


def test_sink_gradient_equals_autograd_of_the_direct_computation():
    model = make_model("qwen2").requires_grad_(False)
    ids = sample_ids(batch=4)
    rows = torch.tensor([1, 0, 1, 2])
    weights = torch.randn(4, ids.shape[1], model.config.vocab_size, generator=torch.Generator().manual_seed(2))
    bank = _bank(model)
    handle = attach_steering(model, trainable=False)

    direct = bank.clone().requires_grad_(True)
    with handle.using_bank(direct, rows):
        (model(ids).logits * weights).sum().backward()
    sink = torch.zeros(bank.shape, dtype=torch.float64)
    with handle.using_bank(bank, rows, grad_sink=sink):
        (model(ids).logits * weights).sum().backward()
    torch.testing.assert_close(sink, direct.grad.double(), rtol=1e-5, atol=1e-6)
    assert sink[:, 0].abs().sum() > 0
    handle.remove()


def test_sink_sums_each_entrys_rows_in_order_whatever_the_micro_batches():
    """The order of additions is fixed by the rows alone: cutting the same rows into other
    micro-batches, or mixing in other entries' rows, gives the same bits."""
    model = make_model("qwen2")
    handle = attach_steering(model, trainable=False)
    num_layers, hidden = model.config.num_hidden_layers, model.config.hidden_size
    bank = torch.zeros(2, num_layers, hidden)
    g = torch.Generator().manual_seed(0)
    upstream = torch.randn(6, 5, hidden, generator=g) * torch.logspace(-6, 3, 5).view(1, 5, 1)
    rows = torch.tensor([0, 1, 0, 0, 1, 0])

    def sink_of(cuts):
        sink = torch.zeros(bank.shape, dtype=torch.float64)
        for part in cuts:
            handle.set_bank(bank, grad_sink=sink)
            handle.set_row_index(rows[part])
            x = torch.zeros(len(part), 5, hidden, requires_grad=True)
            out = handle.steer(1, x)
            (out * upstream[part]).sum().backward()
        handle.set_bank(None)
        return sink

    one = sink_of([list(range(6))])
    assert torch.equal(one, sink_of([[0, 1], [2, 3, 4, 5]]))
    assert torch.equal(one[0], sink_of([[0, 2], [3], [5]])[0])
    expected = torch.zeros(hidden, dtype=torch.float64)
    for b in (0, 2, 3, 5):
        expected = expected + bank_rows_gradient(upstream[b:b + 1])[0]
    assert torch.equal(one[0, 1], expected)
    assert one[:, 0].abs().sum() == 0  # other layers got nothing
    handle.remove()


def test_rows_gradient_ignores_left_padding():
    g = torch.Generator().manual_seed(1)
    grad = torch.randn(3, 7, 16, generator=g)
    padded = torch.cat([torch.zeros(3, 5, 16), grad], dim=1)
    assert torch.equal(bank_rows_gradient(grad), bank_rows_gradient(padded))

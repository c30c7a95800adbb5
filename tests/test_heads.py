"""The three stacked LoRA heads."""

import torch
import torch.nn.functional as F

from anomalyvfm.heads import OUTPUT_DIM, LoRALinear, StackedLoRAHeads, projection_base


def _heads(dim=24, seed=0):
    torch.manual_seed(seed)
    tokens = torch.randn(300, dim)
    return StackedLoRAHeads(dim, projection_base(tokens, dim, seed), rank=4, alpha=8.0), tokens


def test_untrained_heads_equal_their_base_maps():
    heads, tokens = _heads()
    projection = heads.head3.base_weight
    expected = F.normalize(F.layer_norm(F.relu(tokens) @ projection.T, (OUTPUT_DIM,)), dim=-1)
    torch.testing.assert_close(heads(tokens), expected)
    assert heads(tokens).shape == (300, OUTPUT_DIM)
    torch.testing.assert_close(heads(tokens).norm(dim=-1), torch.ones(300))


def test_lora_update_is_scaled_low_rank_and_zero_at_start():
    layer = LoRALinear(torch.eye(6), rank=2, alpha=4.0)
    assert layer.scaling == 2.0 and torch.count_nonzero(layer.lora_B) == 0
    torch.testing.assert_close(layer.merged_weight(), torch.eye(6))
    with torch.no_grad():
        layer.lora_B.copy_(torch.randn(6, 2))
    x = torch.randn(5, 6)
    torch.testing.assert_close(layer(x), x @ layer.merged_weight().T)
    assert torch.linalg.matrix_rank(layer.merged_weight() - torch.eye(6)) == 2


def test_only_lora_parameters_are_trainable():
    heads, _ = _heads()
    trainable = {name for name, p in heads.named_parameters() if p.requires_grad}
    assert trainable == {f"head{i}.lora_{m}" for i in (1, 2, 3) for m in "AB"}
    assert {name for name, _ in heads.named_buffers()} == {f"head{i}.base_weight" for i in (1, 2, 3)}


def test_projection_base_small_dim_is_orthonormal_embedding():
    base = projection_base(torch.randn(50, 24), 24, seed=3)
    assert base.shape == (OUTPUT_DIM, 24)
    torch.testing.assert_close(base.T @ base, torch.eye(24), atol=1e-5, rtol=0)


def test_projection_base_large_dim_takes_top_principal_directions():
    torch.manual_seed(0)
    dim = 600
    scales = torch.linspace(10, 0.01, dim)
    tokens = torch.rand(4000, dim) * scales  # non-negative, so the ReLU of the heads keeps them
    base = projection_base(tokens, dim, seed=0)
    assert base.shape == (OUTPUT_DIM, dim)
    torch.testing.assert_close(base @ base.T, torch.eye(OUTPUT_DIM), atol=1e-4, rtol=0)
    # The highest-variance input axes lie inside the projection, the lowest mostly outside.
    energy = (base ** 2).sum(0)
    assert energy[:50].min() > 0.99 and energy[-50:].mean() < 0.5

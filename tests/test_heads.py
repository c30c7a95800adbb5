"""The three stacked residual LoRA heads."""

import torch

from anomalyvfm.heads import ResidualLoRA, StackedLoRAHeads
from anomalyvfm.scoring import GaussianScorer


def test_untrained_heads_are_exactly_the_identity_on_the_full_token():
    for dim in (24, 384):
        heads = StackedLoRAHeads(dim, rank=16, alpha=32.0)
        tokens = torch.randn(50, dim)
        assert torch.equal(heads(tokens), tokens)
        assert heads.embed(tokens).shape == (50, dim)


def test_untrained_heads_reproduce_the_raw_token_gaussian_exactly():
    generator = torch.Generator().manual_seed(0)
    normal, queries = torch.randn(400, 16, generator=generator), torch.randn(30, 16, generator=generator)
    heads = StackedLoRAHeads(16, rank=4, alpha=8.0)
    raw = GaussianScorer.fit(normal).distances(queries)
    through_heads = GaussianScorer.fit(heads.embed(normal)).distances(heads.embed(queries))
    assert torch.equal(raw, through_heads)


def test_update_is_scaled_low_rank_and_nonlinear():
    layer = ResidualLoRA(6, rank=2, alpha=4.0)
    assert layer.scaling == 2.0 and torch.count_nonzero(layer.lora_B) == 0
    with torch.no_grad():
        layer.lora_B.copy_(torch.randn(6, 2))
    x = torch.randn(100, 6)
    update = layer(x) - x
    assert torch.linalg.matrix_rank(update) == 2  # the update lives in B's 2-dimensional column space
    # GELU in the branch: not a linear map (f(2x) != 2 f(x)), so a refitted Gaussian can see training.
    assert not torch.allclose(layer(2 * x) - 2 * x, 2 * update, atol=1e-3)


def test_only_lora_parameters_are_trainable():
    heads = StackedLoRAHeads(8, rank=2, alpha=4.0)
    trainable = {name for name, p in heads.named_parameters() if p.requires_grad}
    assert trainable == {f"head{i}.lora_{m}" for i in (1, 2, 3) for m in "AB"}
    assert len(heads.lora_parameters()) == 6

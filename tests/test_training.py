"""Synthetic samples and the heads' training objective."""

import torch

from anomalyvfm.heads import StackedLoRAHeads, projection_base
from anomalyvfm.synthetic import STAGES, Affine, make_synthetic_samples
from anomalyvfm.training import TrainingPairs, make_pairs, train_heads


def _images(n=5, size=(28, 42)):
    generator = torch.Generator().manual_seed(1)
    return [torch.rand(3, *size, generator=generator) for _ in range(n)]


def test_synthetic_samples_have_three_equal_stages_and_are_seeded():
    images = _images()
    samples = make_synthetic_samples(lambda i: images[i], len(images), 9, seed=4)
    assert [s.stage for s in samples] == [stage for stage in STAGES for _ in range(3)]
    again = make_synthetic_samples(lambda i: images[i], len(images), 9, seed=4)
    for a, b in zip(samples, again):
        assert a.source == b.source and torch.equal(a.image, b.image)
    other = make_synthetic_samples(lambda i: images[i], len(images), 9, seed=5)
    assert any(not torch.equal(a.image, b.image) for a, b in zip(samples, other))
    for sample in samples:
        assert sample.image.shape == images[sample.source].shape
        assert 0.0 <= sample.image.min() and sample.image.max() <= 1.0
        assert not torch.equal(sample.image, images[sample.source])  # every stage changes the image
        assert (sample.affine is not None) == (sample.stage == "geometric")


def test_affine_warps_feature_grids_like_images():
    grid = torch.zeros(1, 10, 10)
    grid[0, 2, 3] = 1.0
    shifted = Affine(angle=0.0, translate=(0.2, 0.1), scale=1.0).apply(grid)
    assert shifted[0, 3, 5] == 1.0 and shifted.sum() == 1.0  # 0.2 * width = 2 columns, 0.1 * height = 1 row


def test_pairs_drop_uncovered_patches_for_geometric_samples():
    dim = 4
    source_patches = [torch.randn(4, 6, dim)]
    sample = make_synthetic_samples(lambda i: torch.rand(3, 56, 84), 1, 3, seed=0)
    pairs = make_pairs(sample, torch.randn(3, dim), [torch.randn(4, 6, dim) for _ in range(3)],
                       torch.randn(1, dim), source_patches)
    counts = torch.bincount(pairs.sample_of_row, minlength=3)
    assert counts[0] == 1 + 24 and counts[2] == 1 + 24  # CLS + every patch
    assert counts[1] < 1 + 24  # geometric: only fully covered patches
    assert pairs.synthetic.shape == pairs.target.shape == (int(counts.sum()), dim)


def _training_setup(dim=16, seed=0):
    torch.manual_seed(seed)
    normal = torch.randn(2000, dim)
    heads = StackedLoRAHeads(dim, projection_base(normal, dim, seed), rank=4, alpha=8.0)
    clean = torch.randn(90 * 10, dim)
    pairs = TrainingPairs(clean + 0.5 * torch.randn_like(clean), clean, torch.arange(90).repeat_interleave(10))
    return heads, pairs, normal


def test_one_training_step_changes_only_lora_parameters():
    heads, pairs, normal = _training_setup()
    before = {name: value.clone() for name, value in heads.state_dict().items()}
    train_heads(heads, pairs, normal, epochs=1, learning_rate=1e-2, batch_size=90, seed=0,
                device=torch.device("cpu"), progress=False)
    after = heads.state_dict()
    for name, value in after.items():
        changed = not torch.equal(before[name], value)
        assert changed == ("lora_" in name), name
    assert all(p.grad is not None for p in heads.lora_parameters())


def test_training_reduces_the_invariance_loss_without_collapse():
    heads, pairs, normal = _training_setup()
    with torch.no_grad():
        invariance_before = (1 - (heads(pairs.synthetic) * heads(pairs.target)).sum(-1)).mean()
        spread_before = heads(normal).std(0).mean()
    losses = train_heads(heads, pairs, normal, epochs=10, learning_rate=1e-2, batch_size=8, seed=0,
                         device=torch.device("cpu"), progress=False)
    with torch.no_grad():
        invariance_after = (1 - (heads(pairs.synthetic) * heads(pairs.target)).sum(-1)).mean()
        embedded = heads(normal)
    assert len(losses) == 10 and losses[-1] < losses[0]
    assert invariance_after < 0.8 * invariance_before
    # No collapse: normal embeddings keep most of their spread and stay distinct.
    assert embedded.std(0).mean() > 0.8 * spread_before
    similarity = embedded[:200] @ embedded[:200].T
    assert similarity[~torch.eye(200, dtype=torch.bool)].mean() < 0.5


def test_training_is_deterministic_for_a_seed():
    results = []
    for _ in range(2):
        heads, pairs, normal = _training_setup()
        torch.manual_seed(0)
        heads.head1.lora_A.data = torch.linspace(-0.1, 0.1, heads.head1.lora_A.numel()).view_as(heads.head1.lora_A)
        train_heads(heads, pairs, normal, epochs=2, learning_rate=1e-2, batch_size=8, seed=7,
                    device=torch.device("cpu"), progress=False)
        results.append(heads.head1.lora_B.detach().clone())
    assert torch.equal(results[0], results[1])

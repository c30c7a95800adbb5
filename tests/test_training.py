"""The heads' training objective: a margin on the Mahalanobis distance."""

import torch

from anomalyvfm.heads import StackedLoRAHeads
from anomalyvfm.training import (TrainingTokens, gaussian_of, make_training_tokens, margin_loss,
                                 normalised_distance, train_heads)


def _setup(dim=16, seed=0):
    """Normal tokens on a thin slab; defect tokens displaced along its thinnest axis, where the
    Gaussian already sees them a little but not beyond the margin."""
    generator = torch.Generator().manual_seed(seed)
    scales = torch.linspace(2.0, 0.2, dim)
    normal = torch.randn(3000, dim, generator=generator) * scales
    tokens = torch.randn(90 * 20, dim, generator=generator) * scales
    labels = torch.zeros(90 * 20, dtype=torch.long)
    labels[::5] = 1
    tokens[labels == 1, -1] += 0.5
    return normal, TrainingTokens(tokens, labels, torch.arange(90).repeat_interleave(20))


def test_margin_loss_is_low_when_normal_is_inside_and_defects_are_beyond():
    q = torch.tensor([0.5, 1.0, 20.0, 40.0])
    good = margin_loss(q, torch.tensor([0, 0, 1, 1]))
    swapped = margin_loss(q, torch.tensor([1, 1, 0, 0]))
    assert good < 0.2 < 2.0 < swapped


def test_normalised_distance_is_about_one_for_the_fitting_data():
    normal, _ = _setup()
    mean, precision = gaussian_of(normal)
    q = normalised_distance(normal, mean, precision)
    assert 0.8 < float(q.mean()) < 1.05


def test_make_training_tokens_drops_ignored_patches():
    grids = [torch.randn(2, 3, 4), torch.randn(2, 3, 4)]
    labels = [torch.tensor([[0, 1, -1], [0, 0, 0]]), torch.tensor([[-1, -1, 1], [1, 0, 0]])]
    training = make_training_tokens(grids, labels)
    assert training.tokens.shape == (9, 4)
    assert training.labels.tolist() == [0, 1, 0, 0, 0, 1, 1, 0, 0]
    assert training.sample_of_row.tolist() == [0] * 5 + [1] * 4
    torch.testing.assert_close(training.tokens[1], grids[0][0, 1])


def test_training_moves_defect_tokens_farther_than_normal_ones():
    normal, training = _setup()
    heads = StackedLoRAHeads(16, rank=4, alpha=8.0)

    def separation() -> float:
        with torch.no_grad():
            mean, precision = gaussian_of(heads(normal))
            q = normalised_distance(heads(training.tokens), mean, precision)
        return float(q[training.labels == 1].mean() / q[training.labels == 0].mean())

    before = separation()
    losses = train_heads(heads, training, normal, epochs=20, learning_rate=1e-2, batch_size=8, seed=0,
                         device=torch.device("cpu"), progress=False)
    after = separation()
    assert losses[-1] < losses[0]
    assert after > 1.2 * before, (before, after)


def test_training_is_reproducible_with_the_same_seed():
    results = []
    for _ in range(2):
        normal, training = _setup()
        torch.manual_seed(123)
        heads = StackedLoRAHeads(16, rank=4, alpha=8.0)
        train_heads(heads, training, normal, epochs=2, learning_rate=1e-2, batch_size=8, seed=7,
                    device=torch.device("cpu"), progress=False)
        results.append(heads.head1.lora_B.detach().clone())
    assert torch.equal(results[0], results[1])

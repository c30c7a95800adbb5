"""A whitened kNN's nuisance moves: which synthetic tokens give them, and that the fit uses them."""

import torch

from anomalyvfm.config import Config
from anomalyvfm.heads import StackedLoRAHeads
from anomalyvfm.patch_model import HeadSettings, fit_heads_and_scorer, needs_synthetic_samples, nuisance_moves
from anomalyvfm.scoring import whitening_matrix
from anomalyvfm.training import TrainingTokens

DIM = 6


def _training() -> TrainingTokens:
    """Four samples of 5 tokens: 0 relit (target differs), 1 a pose change (its own target), 2 relit
    with a defect in rows 0-1 and a grazed row 2, 3 noise (target differs)."""
    generator = torch.Generator().manual_seed(0)
    targets = torch.randn(20, DIM, generator=generator)
    tokens = targets.clone()
    relit = torch.tensor([0, 1, 2, 3, 4, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19])
    tokens[relit] += torch.randn(len(relit), DIM, generator=generator) * 0.3
    labels = torch.zeros(20, dtype=torch.long)
    labels[10:12], labels[12] = 1, -1
    return TrainingTokens(tokens.half(), targets.half(), labels, torch.arange(4).repeat_interleave(5))


def test_nuisance_moves_are_the_defect_free_tokens_that_differ_from_their_regular_light_target():
    training = _training()
    heads = StackedLoRAHeads(DIM, rank=2, alpha=4.0)
    with torch.no_grad():  # trained-looking heads: the moves are taken after them
        heads.head1.lora_B.normal_(0, 0.5, generator=torch.Generator().manual_seed(1))
    moves = nuisance_moves(training, heads, limit=0, seed=0)
    rows = torch.tensor([0, 1, 2, 3, 4, 13, 14, 15, 16, 17, 18, 19])  # not the pose sample, defect or grazed rows
    expected = heads.embed(training.tokens[rows].float()) - heads.embed(training.targets[rows].float())
    torch.testing.assert_close(moves, expected)
    limited = nuisance_moves(training, heads, limit=5, seed=0)
    assert limited.shape == (5, DIM) and torch.equal(limited, nuisance_moves(training, heads, limit=5, seed=0))
    assert all(bool((expected == row).all(1).any()) for row in limited)
    unchanged = TrainingTokens(training.targets, training.targets, training.labels, training.sample_of_row)
    assert nuisance_moves(unchanged, heads, 0, 0) is None and nuisance_moves(None, heads, 0, 0) is None


def test_untrained_fit_whitens_with_the_nuisance_moves_only_when_asked():
    generator = torch.Generator().manual_seed(3)
    grids = [torch.randn(4, 5, DIM, generator=generator) + torch.tensor([3.0, 0, 0, 0, 0, 0]) for _ in range(10)]
    normal_sample = torch.cat([g.reshape(-1, DIM) for g in grids])
    training = _training()

    def fit(weight: float, shrinkage: float = 0.25):
        torch.manual_seed(0)
        _, scorer, losses = fit_heads_and_scorer(
            grids, normal_sample, training, scorer="knn", knn_bank_size=50, knn_bank_sampling="coreset",
            knn_shrinkage=shrinkage, knn_nuisance_weight=weight, knn_image_bank_size=0,
            heads=HeadSettings(rank=2, alpha=4.0, epochs=0, learning_rate=1e-3, batch_size=2, seed=0),
            device=torch.device("cpu"))
        assert losses == []  # EPOCHS 0: the synthetic tokens are used, the heads stay untrained
        return scorer

    moves = nuisance_moves(training, StackedLoRAHeads(DIM, rank=2, alpha=4.0), 0, 0)
    torch.testing.assert_close(fit(2.0).whitening, whitening_matrix(normal_sample, 0.25, moves, 2.0))
    torch.testing.assert_close(fit(0.0).whitening, whitening_matrix(normal_sample, 0.25))
    assert fit(2.0, shrinkage=1.0).whitening is None


def test_synthetic_samples_are_made_for_training_or_for_the_nuisance_moves():
    from anomaly_vfm_v11_lora import default_config

    config: Config = default_config().replace(KNN_NUISANCE_WEIGHT=1.0)
    assert needs_synthetic_samples(config)
    assert needs_synthetic_samples(config.replace(EPOCHS=0))  # untrained heads: the whitening still uses them
    assert not needs_synthetic_samples(config.replace(EPOCHS=0, KNN_NUISANCE_WEIGHT=0.0))
    assert not needs_synthetic_samples(config.replace(EPOCHS=0, KNN_SHRINKAGE=1.0))
    assert not needs_synthetic_samples(config.replace(EPOCHS=0, SCORER="mahalanobis"))
    assert not needs_synthetic_samples(config.replace(SYNTHETIC_SAMPLES=0))

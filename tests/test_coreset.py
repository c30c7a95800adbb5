"""The kNN memory bank: greedy k-center coreset (PatchCore) against a slow reference, and the bank it makes."""

import torch
import torch.nn.functional as F

from anomalyvfm.heads import StackedLoRAHeads
from anomalyvfm.patch_model import gather_tokens, memory_bank, sample_tokens
from anomalyvfm.scoring import coreset_projection, greedy_coreset


def _reference_greedy(points: torch.Tensor, size: int, first: int) -> list[int]:
    """The textbook greedy k-center: every distance recomputed directly, no pruning."""
    chosen = [first]
    nearest = (points - points[first]).norm(dim=1)
    for _ in range(size - 1):
        new = int(nearest.argmax())
        chosen.append(new)
        nearest = torch.minimum(nearest, (points - points[new]).norm(dim=1))
    return chosen


def _clustered(count: int, dim: int, seed: int) -> torch.Tensor:
    """Points in clusters of very different spreads (as image patches are), so pruning has work to skip."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(12, dim, generator=generator) * 3
    spreads = torch.linspace(0.05, 1.0, 12)
    which = torch.randint(12, (count,), generator=generator)
    return centres[which] + torch.randn(count, dim, generator=generator) * spreads[which, None]


def test_greedy_coreset_equals_the_unpruned_greedy():
    for seed, (count, dim) in enumerate([(3000, 8), (2500, 128), (400, 3)]):
        points = _clustered(count, dim, seed)
        chosen = greedy_coreset(points, 150, seed)
        assert chosen.tolist() == _reference_greedy(points, 150, int(chosen[0])), (count, dim)


def test_greedy_coreset_batches_do_not_change_the_selection():
    # One candidate: a pass per step, as the textbook greedy; more: batches of steps of every length.
    points = _clustered(2000, 16, 5)
    reference = _reference_greedy(points, 300, int(greedy_coreset(points, 1, 5)[0]))
    for candidates in (1, 2, 7, 64, 1999, 5000):
        assert greedy_coreset(points, 300, 5, candidates=candidates).tolist() == reference, candidates


def test_greedy_coreset_keeps_rare_points_that_a_random_subsample_misses():
    generator = torch.Generator().manual_seed(0)
    common = torch.randn(20_000, 16, generator=generator) * 0.1
    rare = torch.randn(5, 16, generator=generator) * 0.1 + torch.eye(16)[:5] * 10  # five far, isolated points
    points = torch.cat([common, rare])
    chosen = set(greedy_coreset(points, 20, seed=3).tolist())
    assert set(range(20_000, 20_005)) <= chosen
    random = set(torch.randperm(len(points), generator=generator)[:20].tolist())
    assert len(random & set(range(20_000, 20_005))) < 5


def test_greedy_coreset_of_at_least_every_point_is_every_point_and_seeded():
    points = _clustered(50, 4, 0)
    assert greedy_coreset(points, 50, 0).tolist() == list(range(50))
    assert torch.equal(greedy_coreset(points, 10, 7), greedy_coreset(points, 10, 7))
    assert len(set(greedy_coreset(points, 10, 7).tolist())) == 10


def test_coreset_projection_is_seeded_and_the_identity_for_small_dimensions():
    assert torch.equal(coreset_projection(64, 0), torch.eye(64))
    assert coreset_projection(384, 1).shape == (384, 128)
    assert torch.equal(coreset_projection(384, 1), coreset_projection(384, 1))


def test_memory_bank_coreset_takes_real_tokens_and_covers_the_rare_ones():
    generator = torch.Generator().manual_seed(0)
    grids = [torch.randn(4, 5, 6, generator=generator) * 0.05 + torch.tensor([1.0, 0, 0, 0, 0, 0]) for _ in range(30)]
    grids[17][2, 3] = torch.tensor([0.0, 0, 0, 0, 0, 1.0])  # one token pointing elsewhere: cosine distance ~1
    heads = StackedLoRAHeads(6, rank=2, alpha=4.0)  # untrained: the identity
    bank = memory_bank(grids, heads, 25, "coreset", seed=0)
    every = torch.cat([g.reshape(-1, 6) for g in grids])
    assert bank.shape == (25, 6)
    # Each bank row is one of the tokens (untrained heads), the odd one among them.
    assert all(bool((every == row).all(1).any()) for row in bank)
    assert bool((bank == grids[17][2, 3]).all(1).any())
    torch.testing.assert_close(memory_bank(grids, heads, 25, "random", seed=0), sample_tokens(grids, 25, 0))
    assert memory_bank(grids, heads, 0, "coreset", seed=0).shape == (600, 6)


def test_memory_bank_coreset_rows_are_in_selection_order_so_a_prefix_is_the_smaller_coreset():
    grids = [_clustered(40, 6, seed=i).reshape(4, 10, 6) for i in range(15)]
    heads = StackedLoRAHeads(6, rank=2, alpha=4.0)  # untrained: the identity
    every = torch.cat([g.reshape(-1, 6) for g in grids])
    projected = F.normalize(every, dim=-1) @ coreset_projection(6, 0)
    expected = every[greedy_coreset(projected, 60, seed=0)]  # selection order, not index order
    bank = memory_bank(grids, heads, 60, "coreset", seed=0)
    torch.testing.assert_close(bank, expected)
    torch.testing.assert_close(memory_bank(grids, heads, 12, "coreset", seed=0), bank[:12])


def test_gather_tokens_reads_across_grids_in_order():
    grids = [torch.arange(12.0).reshape(2, 3, 2), torch.arange(12.0, 20.0).reshape(2, 2, 2)]
    every = torch.cat([g.reshape(-1, 2) for g in grids])
    indices = torch.tensor([0, 5, 6, 9])
    torch.testing.assert_close(gather_tokens(grids, indices), every[indices])


def test_coreset_bank_scores_every_training_token_within_the_coreset_radius():
    """A k-center coreset bounds every normal token's distance to the bank: no normal patch is left far away."""
    points = F.normalize(_clustered(4000, 8, 5), dim=-1)
    chosen = greedy_coreset(points, 200, 0)
    radius = torch.cdist(points, points[chosen]).min(1).values.max()
    random = torch.randperm(4000, generator=torch.Generator().manual_seed(0))[:200]
    assert radius < torch.cdist(points, points[random]).min(1).values.max()

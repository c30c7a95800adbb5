"""Heads and patch scorer fitted from backbone tokens alone (no images).

The pipeline (``fit.Runner.fit_scale``) and the quality benchmark (which replays cached
tokens) both call ``fit_heads_and_scorer``, so a benchmark row is exactly what a run does:

    normal patch grids [gh, gw, D] + synthetic tokens with labels -> heads (trained)
    -> Gaussian on heads(normal subsample)       (SCORER "mahalanobis")
    -> memory bank of heads(normal tokens)        (SCORER "knn", cosine 1-NN; a greedy coreset or random subsample,
                                                   in the space whitened by the normal subsample's shrunk covariance
                                                   plus the synthetic lighting and noise moves' scatter;
                                                   the image score's own plain search on the bank's first rows)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from anomalyvfm import timing
from anomalyvfm.config import Config
from anomalyvfm.heads import StackedLoRAHeads
from anomalyvfm.scoring import Scorer, coreset_projection, fit_scorer, greedy_coreset, whitening_matrix
from anomalyvfm.training import TrainingTokens, train_heads


@dataclass
class HeadSettings:
    rank: int
    alpha: float
    epochs: int
    learning_rate: float
    batch_size: int
    seed: int


def sample_tokens(grids: list[torch.Tensor], limit: int, seed: int) -> torch.Tensor:
    """A seeded random subsample of at most ``limit`` tokens (0: all) of ``[gh, gw, D]`` grids, float32 ``[n, D]``."""
    total = sum(g.shape[0] * g.shape[1] for g in grids)
    if limit <= 0 or limit >= total:
        return torch.cat([g.reshape(-1, g.shape[-1]).float() for g in grids])
    generator = torch.Generator().manual_seed(seed)
    return gather_tokens(grids, torch.randperm(total, generator=generator)[:limit].sort().values)


def gather_tokens(grids: list[torch.Tensor], indices: torch.Tensor) -> torch.Tensor:
    """Tokens at ``indices`` (ascending, into the grids' tokens concatenated in order) of ``[gh, gw, D]``
    grids, float32 ``[len(indices), D]``, without concatenating the grids."""
    counts = torch.tensor([g.shape[0] * g.shape[1] for g in grids])
    ends = torch.cumsum(counts, 0)
    image_of = torch.searchsorted(ends, indices, right=True)
    starts = ends - counts
    parts = []
    for image in image_of.unique().tolist():
        local = indices[image_of == image] - starts[image]
        parts.append(grids[image].reshape(-1, grids[image].shape[-1])[local].float())
    return torch.cat(parts)


def memory_bank(normal_grids: list[torch.Tensor], heads: StackedLoRAHeads, size: int, sampling: str,
                seed: int) -> torch.Tensor:
    """The kNN memory bank: the heads' embeddings ``[n, D]`` of ``size`` normal tokens (0: every token).
    A coreset's rows are in selection order, so its first ``k`` rows are the greedy coreset of ``k``.

    ``sampling``: ``"coreset"``, a greedy k-center coreset under cosine distance (PatchCore; searched
    on a seeded random projection of the unit embeddings), or ``"random"``, a seeded random subsample.
    """
    total = sum(g.shape[0] * g.shape[1] for g in normal_grids)
    if sampling == "random" or size <= 0 or size >= total:
        return heads.embed(sample_tokens(normal_grids, size, seed))
    projection = coreset_projection(normal_grids[0].shape[-1], seed)
    projected = torch.cat([F.normalize(heads.embed(g.reshape(-1, g.shape[-1])), dim=-1) @ projection
                           for g in normal_grids])
    chosen, order = greedy_coreset(projected, size, seed).sort()
    bank = torch.empty(size, normal_grids[0].shape[-1])
    bank[order] = gather_tokens(normal_grids, chosen)  # back into selection order: any prefix is a coreset too
    return heads.embed(bank)


def needs_synthetic_samples(config: Config) -> bool:
    """Whether ``config``'s fit uses synthetic samples: to train the heads, or for a whitened kNN's nuisance moves."""
    whitened_with_moves = config.SCORER == "knn" and config.KNN_SHRINKAGE < 1 and config.KNN_NUISANCE_WEIGHT > 0
    return config.SYNTHETIC_SAMPLES > 0 and (config.EPOCHS > 0 or whitened_with_moves)


def nuisance_moves(training: TrainingTokens | None, heads: StackedLoRAHeads, limit: int, seed: int
                   ) -> torch.Tensor | None:
    """How the heads' embeddings of normal content move under the synthetic nuisances, ``[m, D]``:
    ``heads(token) - heads(target)`` for the defect-free tokens (label 0) of the samples whose tokens differ
    from their regular-light targets (the lighting and noise stages; a pose change is its own target).
    A seeded subsample of at most ``limit`` (0: all); None when there are none.
    """
    if training is None or not len(training.tokens):
        return None
    rows = torch.nonzero((training.labels == 0) & (training.tokens != training.targets).any(dim=1)).flatten()
    if not len(rows):
        return None
    if 0 < limit < len(rows):
        generator = torch.Generator().manual_seed(seed)
        rows = rows[torch.randperm(len(rows), generator=generator)[:limit].sort().values]
    return heads.embed(training.tokens[rows].float()) - heads.embed(training.targets[rows].float())


def fit_heads_and_scorer(normal_grids: list[torch.Tensor], normal_sample: torch.Tensor, training: TrainingTokens | None,
                         *, scorer: str, knn_bank_size: int, knn_bank_sampling: str, knn_shrinkage: float,
                         knn_nuisance_weight: float, knn_image_bank_size: int, heads: HeadSettings, device: torch.device,
                         progress: bool = False) -> tuple[StackedLoRAHeads, Scorer, list[float]]:
    """Train the heads (when ``training`` is given and ``heads.epochs > 0``), then fit the patch scorer.

    ``training``: the synthetic samples' tokens; the heads' training set and, for a whitened kNN, its
    nuisance moves (``nuisance_moves``), so it is used even when ``heads.epochs`` is 0.

    ``normal_sample``: ``sample_tokens(normal_grids, MAX_FIT_TOKENS, seed)``, the Gaussian's fit tokens and
    the kNN's whitening sample (the caller also sizes the LoRA from it, so it is drawn once).
    ``knn_shrinkage``: the kNN metric's (``scoring.whitening_matrix``); 1 is plain cosine.
    ``knn_nuisance_weight``: the weight of the nuisance moves' scatter in that metric (0: none).
    ``knn_image_bank_size``: with a whitened kNN, the image score's plain-cosine search runs against that
    many first rows of the bank (``scoring.NearestNeighbourScorer``; 0: on the maps' distances).

    Returns ``(heads, patch scorer on the heads' output, loss per epoch)``.
    """
    dim = normal_grids[0].shape[-1]
    model_heads = StackedLoRAHeads(dim, rank=heads.rank, alpha=heads.alpha)
    losses: list[float] = []
    with timing.stage("training"):
        if training is not None and heads.epochs > 0 and len(training.tokens):
            losses = train_heads(model_heads, training, normal_sample, epochs=heads.epochs,
                                 learning_rate=heads.learning_rate, batch_size=heads.batch_size, seed=heads.seed,
                                 device=device, progress=progress)
        model_heads.cpu().eval()
    with timing.stage("fitting"):
        if scorer == "mahalanobis":
            return model_heads, fit_scorer(scorer, model_heads.embed(normal_sample), bank_size=0, seed=heads.seed), losses
        bank = memory_bank(normal_grids, model_heads, knn_bank_size, knn_bank_sampling, heads.seed)
        whitening = None
        if knn_shrinkage < 1:
            moves = None
            if knn_nuisance_weight > 0:
                moves = nuisance_moves(training, model_heads, len(normal_sample), heads.seed)
            whitening = whitening_matrix(model_heads.embed(normal_sample), knn_shrinkage, moves, knn_nuisance_weight)
        return model_heads, fit_scorer(scorer, bank, bank_size=0, seed=heads.seed, whitening=whitening,
                                       image_bank_size=knn_image_bank_size), losses

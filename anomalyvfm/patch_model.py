"""Heads and patch scorer fitted from backbone tokens alone (no images).

The pipeline (``fit.Runner.fit_scale``) and the quality benchmark (which replays cached
tokens) both call ``fit_heads_and_scorer``, so a benchmark row is exactly what a run does:

    normal patch grids [gh, gw, D] + synthetic tokens with labels -> heads (trained)
    -> Gaussian on heads(normal subsample)       (SCORER "mahalanobis")
    -> memory bank of heads(normal tokens)        (SCORER "knn", cosine 1-NN)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from anomalyvfm.heads import StackedLoRAHeads
from anomalyvfm.scoring import Scorer, fit_scorer
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
    counts = torch.tensor([g.shape[0] * g.shape[1] for g in grids])
    total = int(counts.sum())
    if limit <= 0 or limit >= total:
        return torch.cat([g.reshape(-1, g.shape[-1]).float() for g in grids])
    generator = torch.Generator().manual_seed(seed)
    chosen = torch.randperm(total, generator=generator)[:limit].sort().values
    ends = torch.cumsum(counts, 0)
    image_of = torch.searchsorted(ends, chosen, right=True)
    starts = ends - counts
    parts = []
    for image in image_of.unique().tolist():
        local = chosen[image_of == image] - starts[image]
        parts.append(grids[image].reshape(-1, grids[image].shape[-1])[local].float())
    return torch.cat(parts)


def fit_heads_and_scorer(normal_grids: list[torch.Tensor], normal_sample: torch.Tensor, training: TrainingTokens | None,
                         *, scorer: str,
                         knn_bank_size: int, heads: HeadSettings, device: torch.device,
                         progress: bool = False) -> tuple[StackedLoRAHeads, Scorer, list[float]]:
    """Train the heads (when ``training`` is given and ``heads.epochs > 0``), then fit the patch scorer.

    ``normal_sample``: ``sample_tokens(normal_grids, MAX_FIT_TOKENS, seed)``, the Gaussian's fit tokens
    (the caller also sizes the LoRA from it, so it is drawn once).

    Returns ``(heads, patch scorer on the heads' output, loss per epoch)``.
    """
    dim = normal_grids[0].shape[-1]
    model_heads = StackedLoRAHeads(dim, rank=heads.rank, alpha=heads.alpha)
    losses: list[float] = []
    if training is not None and heads.epochs > 0 and len(training.tokens):
        losses = train_heads(model_heads, training, normal_sample, epochs=heads.epochs,
                             learning_rate=heads.learning_rate, batch_size=heads.batch_size, seed=heads.seed,
                             device=device, progress=progress)
    model_heads.cpu().eval()
    fit_tokens = normal_sample if scorer == "mahalanobis" else sample_tokens(normal_grids, knn_bank_size, heads.seed)
    return model_heads, fit_scorer(scorer, model_heads.embed(fit_tokens), bank_size=0, seed=heads.seed), losses

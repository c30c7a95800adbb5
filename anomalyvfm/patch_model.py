"""The model on backbone tokens: LoRA heads, a Gaussian on their output, optionally fused with
cosine kNN on the raw tokens. Fitted from tokens alone (no images), so the pipeline and the
quality benchmark (which replays cached tokens) run exactly the same code.

    normal tokens [N, D] + synthetic tokens [M, D] with labels -> heads (trained) -> Gaussian fit
    raw normal tokens -> kNN memory bank (subsample)                          [SCORER "mahalanobis+knn"]
    validation tokens -> per-component mean/std of patch distances -> z-scores, averaged
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from anomalyvfm.heads import StackedLoRAHeads
from anomalyvfm.scoring import MAX_FIT_TOKENS, GaussianScorer, NearestNeighbourScorer
from anomalyvfm.training import TrainingTokens, train_heads

SCORERS = ("mahalanobis", "knn", "mahalanobis+knn")


@dataclass
class HeadSettings:
    rank: int
    alpha: float
    epochs: int
    learning_rate: float
    batch_size: int
    seed: int


@dataclass
class PatchModel:
    """Scores patch tokens ``[M, D]`` -> distances ``[M]`` (higher = more anomalous)."""

    heads: StackedLoRAHeads
    gaussian: GaussianScorer | None
    knn: NearestNeighbourScorer | None
    # z-score statistics per component (mean, std) over validation patch distances; empty until calibrated
    calibration: dict[str, tuple[float, float]] = field(default_factory=dict)
    losses: list[float] = field(default_factory=list)

    def components(self, tokens: torch.Tensor) -> dict[str, torch.Tensor]:
        """Raw distances of each scorer, ``{name: [M]}``."""
        out = {}
        if self.gaussian is not None:
            out["mahalanobis"] = self.gaussian.distances(self.heads.embed(tokens))
        if self.knn is not None:
            out["knn"] = self.knn.distances(tokens)
        return out

    def calibrate(self, validation_tokens: torch.Tensor) -> None:
        """Per-component mean and std of the distances of normal validation tokens ``[M, D]``."""
        for name, values in self.components(validation_tokens).items():
            self.calibration[name] = (float(values.mean()), max(float(values.std()), 1e-6))

    def distances(self, tokens: torch.Tensor) -> torch.Tensor:
        """``[M, D]`` -> ``[M]``: one scorer's distance, or the mean of the calibrated z-scores of both."""
        parts = self.components(tokens)
        if len(parts) == 1:
            return next(iter(parts.values()))
        return torch.stack([(values - self.calibration[name][0]) / self.calibration[name][1]
                            for name, values in parts.items()]).mean(0)


def sample_tokens(grids: list[torch.Tensor], limit: int, seed: int) -> torch.Tensor:
    """A seeded random subsample of at most ``limit`` tokens from ``[gh, gw, D]`` grids, as float32 ``[n, D]``."""
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


def fit_patch_model(normal_grids: list[torch.Tensor], training: TrainingTokens | None, *, scorer: str,
                    knn_bank_size: int, heads: HeadSettings, device: torch.device,
                    progress: bool = False) -> PatchModel:
    """Train the heads (if ``training`` and epochs) and fit the scorers on normal patch grids ``[gh, gw, D]``."""
    if scorer not in SCORERS:
        raise ValueError(f"scorer must be one of {SCORERS}, got {scorer!r}")
    dim = normal_grids[0].shape[-1]
    model_heads = StackedLoRAHeads(dim, rank=heads.rank, alpha=heads.alpha)
    fit_tokens = sample_tokens(normal_grids, MAX_FIT_TOKENS, heads.seed)
    losses: list[float] = []
    if training is not None and heads.epochs > 0 and len(training.tokens):
        losses = train_heads(model_heads, training, fit_tokens, epochs=heads.epochs,
                             learning_rate=heads.learning_rate, batch_size=heads.batch_size, seed=heads.seed,
                             device=device, progress=progress)
    model_heads.cpu().eval()
    gaussian = GaussianScorer.fit(model_heads.embed(fit_tokens)) if "mahalanobis" in scorer else None
    knn = None
    if "knn" in scorer:
        knn = NearestNeighbourScorer(sample_tokens(normal_grids, knn_bank_size, heads.seed + 1))
    return PatchModel(model_heads, gaussian, knn, losses=losses)

"""AnomalyVFM v1.2: category-adaptive LoRA rank and alpha. Everything else is v1.1.

Rule: the LoRA rank follows the effective dimensionality of the category's normal patch
tokens, measured as the participation ratio of their covariance eigenvalues,
PR = (sum λ)^2 / sum λ^2 (1 for a single direction, D for isotropic data). A category whose
normal appearance varies along few directions gets a small update, a varied one a larger
one: rank = PR / 2 rounded to a power of two, clipped to [4, 64]; alpha = 2 * rank keeps
v1.1's scaling alpha / rank = 2.

    python experimental/anomaly_vfm_v12_adaptive_lora.py [--NAME=value ...]
"""

import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import anomaly_vfm_v11_lora as v11  # noqa: E402
from anomalyvfm.config import Config  # noqa: E402
from anomalyvfm.method import Method  # noqa: E402

MIN_RANK, MAX_RANK = 4, 64


def participation_ratio(tokens: torch.Tensor) -> float:
    """Effective dimensionality of ``[N, D]`` tokens: (sum λ)^2 / sum λ^2 of their covariance."""
    centred = tokens.double() - tokens.double().mean(0)
    eigenvalues = torch.linalg.eigvalsh(centred.T @ centred / max(len(tokens) - 1, 1)).clamp_min(0)
    return float(eigenvalues.sum() ** 2 / (eigenvalues ** 2).sum())


class AdaptiveLoRA(Method):
    name = "v1.2-adaptive-lora"

    def lora_shape(self, config: Config, normal_tokens: torch.Tensor) -> tuple[int, float]:
        rank = 2 ** round(math.log2(max(participation_ratio(normal_tokens) / 2, 1.0)))
        rank = int(min(max(rank, MIN_RANK), MAX_RANK))
        return rank, 2.0 * rank


if __name__ == "__main__":
    sys.exit(v11.main(method=AdaptiveLoRA()))

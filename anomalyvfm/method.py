"""``Method``: the few decisions that the experimental versions (v1.2 - v1.4) change."""

from __future__ import annotations

import torch

from anomalyvfm.config import Config


class Method:
    """The decisions that distinguish AnomalyVFM versions. v1.1 is this class as is; each hook says what it does."""

    name = "v1.1"
    needs_attention = False

    def lora_shape(self, config: Config, normal_tokens: torch.Tensor) -> tuple[int, float]:
        """LoRA (rank, alpha) for a category, given its normal tokens ``[N, D]``."""
        return config.LORA_RANK, config.LORA_ALPHA

    def image_sizes(self, config: Config) -> list[int]:
        """Shorter-side sizes at which images are scored; maps and scores are averaged over them."""
        return [config.IMAGE_SIZE]

    def patch_distances(self, distances: torch.Tensor, cls_distance: float,
                        attention: torch.Tensor | None) -> torch.Tensor:
        """An image's patch distances ``[gh, gw]`` before they become its anomaly map."""
        return distances

    def image_score(self, cls_z: float, patch_z: float) -> float:
        """The image score from the standardised CLS distance and peak score (``scoring.peak_score``).
        v1.1: the peak term alone. The global CLS term follows the lighting, not the defect: under AD 2's lighting changes
        it moves every image's score (issue 14's measurements; docs/Heads_and_Scoring.md)."""
        return patch_z

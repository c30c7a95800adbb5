"""AnomalyVFM v1.4: CLS-to-patch attention guides the patch scores. Everything else is v1.1.

DINOv2's last block attends from the CLS token mostly to the object and to salient
structure, little to plain background. Each patch distance is multiplied by
``FLOOR + (1 - FLOOR) * a / max(a)``, where ``a`` is that patch's CLS attention (mean over
heads): background patches keep at least ``FLOOR`` of their score (a defect there is
damped, not erased), attended patches keep all of it. The image score then uses these
weighted distances too.

    python experimental/anomaly_vfm_v14_attention_guided_lora.py [--NAME=value ...]
"""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import anomaly_vfm_v11_lora as v11  # noqa: E402
from anomalyvfm.method import Method  # noqa: E402

FLOOR = 0.5


class AttentionGuidedLoRA(Method):
    name = "v1.4-attention-guided-lora"
    needs_attention = True

    def patch_distances(self, distances: torch.Tensor, cls_distance: float,
                        attention: torch.Tensor | None) -> torch.Tensor:
        weight = attention / attention.max().clamp_min(1e-12)
        return distances * (FLOOR + (1.0 - FLOOR) * weight)


if __name__ == "__main__":
    sys.exit(v11.main(method=AttentionGuidedLoRA()))

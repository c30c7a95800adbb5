"""AnomalyVFM v1.3: multi-scale features. Everything else is v1.1.

Each image is scored at three shorter-side sizes, 0.5x, 1x and 1.5x ``IMAGE_SIZE``, each
rounded to a multiple of 14 so the patch grid covers the image without padding (the
predecessor's 128/256/512 are not multiples of 14). Each scale has its own heads and
Gaussians; anomaly maps (at the original image size) and image scores are averaged over
the scales. The half scale sees context (large defects, missing parts), the 1.5x scale
fine detail (thin scratches); 1.5x rather than 2x keeps the cost at 3.5 backbone passes
per image instead of 5.25.

    python experimental/anomaly_vfm_v13_multiscale_lora.py [--NAME=value ...]
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import anomaly_vfm_v11_lora as v11  # noqa: E402
from anomalyvfm.config import Config  # noqa: E402
from anomalyvfm.method import Method  # noqa: E402

SCALE_FACTORS = (0.5, 1.0, 1.5)
PATCH = 14


class MultiScaleLoRA(Method):
    name = "v1.3-multiscale-lora"

    def image_sizes(self, config: Config) -> list[int]:
        sizes = {max(PATCH, round(config.IMAGE_SIZE * factor / PATCH) * PATCH) for factor in SCALE_FACTORS}
        return sorted(sizes)


if __name__ == "__main__":
    sys.exit(v11.main(method=MultiScaleLoRA()))

"""AnomalyVFM: frozen DINOv2 + stacked LoRA heads + Gaussian scoring for MVTec AD 2.

Each concern lives in one module, and data flows through them once:

- ``dataset_ad2`` (top level): the MVTec AD 2 folder layout, images and masks.
- ``anomalyvfm.demo_data``: a small generated dataset in the same layout.
- ``anomalyvfm.config``: the ``Config`` of a run and strict ``--NAME=value`` overrides.
- ``anomalyvfm.backbone``: preprocessing and the frozen DINOv2 feature extractor.
- ``anomalyvfm.synthetic``: the 90 synthetic training samples.
- ``anomalyvfm.heads``: the three stacked LoRA heads (a plain ``nn.Module``).
- ``anomalyvfm.training``: the heads' training objective and loop.
- ``anomalyvfm.scoring``: Mahalanobis / kNN scorers, anomaly maps and image scores.
- ``anomalyvfm.metrics``: AU-PRO, SegF1, image AUROC/AP, ClassF1, per-lighting tables.
- ``anomalyvfm.model_io``: safetensors/JSON model files, float16 TIFF maps.
- ``anomalyvfm.reporting`` and ``anomalyvfm.plots``: results/ files and figures.
- ``anomalyvfm.pipeline``: one category end to end, and a whole run.
"""

__version__ = "1.1.0"

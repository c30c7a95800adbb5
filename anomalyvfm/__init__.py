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
- ``anomalyvfm.method``: ``Method``, the hooks the experimental versions override.
- ``anomalyvfm.preflight``: the cheap checks of settings, data and RESULTS_DIR before any work.
- ``anomalyvfm.results``: RESULTS_DIR's lock, history, publishing, and reuse of finished categories.
- ``anomalyvfm.fit``: the backbone ``Runner`` and fitting a category.
- ``anomalyvfm.model``: the saved ``CategoryModel`` (validated on load) and how it scores images.
- ``anomalyvfm.evaluate``: metrics of a category from its saved scores and maps.
- ``anomalyvfm.predict``: ``--PREDICT`` and ``--EXPORT_SUBMISSION``.
- ``anomalyvfm.summary``: the top-level reports of a run.
- ``anomalyvfm.pipeline``: the run loop (``run``).
"""

__version__ = "1.8.0"

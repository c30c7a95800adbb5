"""Fitting a category: backbone features, the heads and scorers of each scale, and raw distances.

    train images -> backbone (once per image) -> illumination range
                 -> synthetic samples (nuisance + pasted defect, from the same decoded inputs)
                 -> heads training -> Gaussian / kNN fit on normal embeddings     (``Runner.fit_scale``)
    validation + test_public -> raw distances -> score fusion, maps saved as float16 TIFF, scores.csv
    validation (kept decoded inputs) + lighting variants + synthetic defects
                 -> thresholds (``calibration``) -> model/                        (``fit_category``)

Every image is decoded once per pass, by the run's one ``ImageLoader``; sizes come from file
headers. An image that cannot be decoded is left out (not an error) and recorded in
``Runner.unreadable``; ``fit.json`` lists a category's, so that a reused category reports them too.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Collection, Iterable, Iterator, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

import dataset_ad2
from anomalyvfm import model_io, plots, timing
from anomalyvfm.backbone import FeatureExtractor, Features, ImageLoader, autocast, load_backbone, normalize
from anomalyvfm.calibration import calibrate_thresholds
from anomalyvfm.config import Config
from anomalyvfm.evaluate import SKIPPED_KEY, map_path, write_scores_csv
from anomalyvfm.illumination import IlluminationRange, light_stats
from anomalyvfm.method import Method
from anomalyvfm.preflight import check_device
from anomalyvfm.model import (CategoryModel, RawScores, ScaleModel, fit_fusion, fit_map_medians, full_size_map,
                              fused_scores, model_settings)
from anomalyvfm.patch_model import HeadSettings, fit_heads_and_scorer, needs_synthetic_samples, sample_tokens
from anomalyvfm.scoring import (MAX_FIT_TOKENS, clipping_is_normal, fit_scorer, patch_grid, peak_score, phase_shifts,
                               saturated_share, shifted_inputs, stacked_phases)
from anomalyvfm.synthetic import SyntheticSample, make_synthetic_samples
from anomalyvfm.training import training_tokens_of


PREVIEW_SAMPLES = 12  # synthetic samples shown in <category>/synthetic_samples.png
TRAIN_AS_VALIDATION = ("thresholds and score fusion use the training images instead (biased low: expect more "
                       "false alarms).")


class Runner:
    """Holds the backbone, the device and the image loader for a run; fits and scores categories.

    A context manager: ``close()`` (on exit) ends the loader's decode workers.
    """

    def __init__(self, config: Config, method: Method, *, backbone: torch.nn.Module | None = None,
                 progress: bool = True) -> None:
        self.config, self.method, self.progress = config, method, progress
        self.device = check_device(config.DEVICE)
        model = backbone if backbone is not None else load_backbone(config.BACKBONE)
        # Checks FEATURE_LAYERS against the backbone's depth (BackboneError), before any fit.
        self.extractor = FeatureExtractor(model, config.FEATURE_LAYERS, attention=method.needs_attention).to(self.device)
        # Last: a failed backbone load above leaves no worker processes behind.
        self.loader = ImageLoader(config.NUM_WORKERS, batch_size=config.BATCH_SIZE, device=self.device)
        # Every image this run could not decode, with the reason, in the order found.
        self.unreadable: dict[Path, str] = {}
        # Decoded network inputs (uint8 [3, h, w]) that ``raw_scores`` was asked to keep, by path.
        self.kept_inputs: dict[Path, torch.Tensor] = {}

    def close(self) -> None:
        self.loader.close()

    def __enter__(self) -> "Runner":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def unreadable_among(self, paths: Iterable[Path]) -> list[tuple[str, str]]:
        """``(path, reason)`` of the images among ``paths`` that this run could not decode, in ``paths`` order."""
        return [(str(path), self.unreadable[path]) for path in paths if path in self.unreadable]

    # -- backbone ---------------------------------------------------------------------------
    def features(self, paths: Sequence[Path], image_size: int, desc: str,
                 illumination: IlluminationRange | None = None, *, pixels: bool = False,
                 shifts: Sequence[tuple[int, int]] = ()
                 ) -> Iterator[tuple[list[int], Features, tuple[torch.Tensor, ...], torch.Tensor | None, list[Features]]]:
        """Backbone features of images on disk, batch by batch: their indices, features, the light
        statistics of the decoded inputs (``illumination.light_stats``, before ``illumination`` projects them),
        with ``pixels`` those inputs as uint8 ``[B, 3, h, w]`` on the CPU (else None), and the features of the
        same inputs moved by each of ``shifts`` (``scoring.shifted_inputs``; the scoring phases after the first).

        An image that cannot be decoded is skipped: no batch holds it, and once the pass is over it
        is in ``self.unreadable``.
        """
        batches = self.loader.batches(paths, image_size, self.extractor.patch_size, pixels=pixels)
        with tqdm(total=len(paths), desc=desc, unit="img", leave=False, disable=not self.progress or None) as bar:
            while True:
                with timing.stage("load"):
                    batch = next(batches, None)
                if batch is None:
                    break
                indices, images = batch[0], batch[1]
                patch = self.extractor.patch_size
                shifted = [self._forward(shifted_inputs(images, shift, patch), illumination) for shift in shifts]
                yield (indices, self._forward(images, illumination), light_stats(images), batch[2] if pixels else None,
                       shifted)
                bar.update(len(indices))
        for path, reason in self.loader.unreadable:
            self.unreadable.setdefault(path, reason)

    def _forward(self, images: torch.Tensor, illumination: IlluminationRange | None) -> Features:
        with timing.stage("backbone"), autocast(self.device):
            images = images.to(self.device)
            saturated = saturated_share(images, self.extractor.patch_size).cpu()  # before the light is rescaled
            if illumination is not None:
                images = illumination.apply(images)
            out = self.extractor(normalize(images))
        return Features(out.cls.float().cpu(), out.patches.float().cpu(),
                        None if out.attention is None else out.attention.float().cpu(), saturated)

    def forward_tensors(self, images: Sequence[torch.Tensor], illumination: IlluminationRange | None,
                        shift: tuple[int, int] = (0, 0)) -> list[Features]:
        """Features of in-memory images ``[3, h, w]`` in [0, 1] (sizes may differ), one each; each input moved
        by ``shift`` first (``scoring.shifted_inputs``)."""
        order: dict[tuple[int, ...], list[int]] = {}
        for index, image in enumerate(images):
            order.setdefault(tuple(image.shape), []).append(index)
        out: list[Features | None] = [None] * len(images)
        for members in order.values():
            for start in range(0, len(members), self.config.BATCH_SIZE):
                batch = members[start:start + self.config.BATCH_SIZE]
                inputs = shifted_inputs(torch.stack([images[i] for i in batch]), shift, self.extractor.patch_size)
                features = self._forward(inputs, illumination)
                for row, index in enumerate(batch):
                    attention = None if features.attention is None else features.attention[row]
                    out[index] = Features(features.cls[row], features.patches[row], attention, features.saturated[row])
        return out  # type: ignore[return-value]

    # -- fitting ----------------------------------------------------------------------------
    def fit_scale(self, train: Sequence[dataset_ad2.Sample], image_size: int) -> ScaleModel:
        """Backbone over the training images, illumination range, synthetic samples, heads training, scorer fit.

        Unreadable training images are left out; ``DatasetError`` if none is readable.
        """
        config, paths = self.config, [s.path for s in train]
        synthesize = needs_synthetic_samples(config)
        cls_tokens = torch.zeros(len(train), self.extractor.dim)
        means, stds, fields = torch.zeros(len(train), 3), torch.zeros(len(train), 3), torch.zeros(len(train), 3, 3)
        patch_grids: list[torch.Tensor] = [torch.empty(0)] * len(train)
        saturated: list[torch.Tensor] = [torch.empty(0)] * len(train)  # [gh, gw]: do normal images clip?
        inputs: list[torch.Tensor] = [torch.empty(0)] * len(train)  # uint8 [3, h, w]: the synthetic samples' sources
        read: list[int] = []
        for indices, features, (mean, std, light_field), pixels, _ in self.features(
                paths, image_size, f"features train @{image_size}", pixels=synthesize):
            cls_tokens[indices], means[indices], stds[indices], fields[indices] = features.cls, mean, std, light_field
            for row, index in enumerate(indices):
                patch_grids[index] = features.patches[row].half()  # half: train grids are the run's largest memory
                saturated[index] = features.saturated[row]
                if pixels is not None:
                    inputs[index] = pixels[row]
            read += indices
        if not read:
            raise dataset_ad2.DatasetError(f"{paths[0].parent} has no readable image; cannot fit a model.")
        read.sort()  # the readable images in their listing order, as if the others were not there
        cls_tokens, means, stds, fields = cls_tokens[read], means[read], stds[read], fields[read]
        patch_grids, inputs = [patch_grids[i] for i in read], [inputs[i] for i in read]
        discount = config.DISCOUNT_SATURATED and clipping_is_normal([saturated[i] for i in read])
        illumination = IlluminationRange.of(means, stds, fields)
        normal_sample = sample_tokens(patch_grids, MAX_FIT_TOKENS, config.SEED)
        rank, alpha = self.method.lora_shape(config, normal_sample)
        training = None
        if synthesize:
            patch = self.extractor.patch_size
            # The decoded inputs of the pass above, as the backbone saw them (no second decode).
            load = lambda i: inputs[i].float().div_(255.0)
            samples: list[SyntheticSample] = []  # the previewed ones; the rest are let go a chunk at a time

            def made_and_previewed() -> Iterator[SyntheticSample]:
                every = max(1, config.SYNTHETIC_SAMPLES // PREVIEW_SAMPLES)
                for index, sample in enumerate(make_synthetic_samples(load, len(read), config.SYNTHETIC_SAMPLES,
                                                                      config.SEED)):
                    if index % every == 0 and len(samples) < PREVIEW_SAMPLES:
                        samples.append(sample)
                    yield sample

            # float16 at once, as training keeps them: at AD 2 scale these grids are the fit's largest tensors
            encode = lambda images: [f.patches.half() for f in self.forward_tensors(images, illumination)]
            training = training_tokens_of(timing.timed(made_and_previewed(), "synthetic"), encode, patch_grids, patch,
                                          chunk=config.BATCH_SIZE)
            inputs.clear()
        heads, patch_scorer, losses = fit_heads_and_scorer(  # timed as "training" and "fitting"
            patch_grids, normal_sample, training, scorer=config.SCORER, knn_bank_size=config.KNN_BANK_SIZE,
            knn_bank_sampling=config.KNN_BANK_SAMPLING, knn_shrinkage=config.KNN_SHRINKAGE,
            knn_nuisance_weight=config.KNN_NUISANCE_WEIGHT, knn_image_bank_size=config.KNN_IMAGE_BANK_SIZE,
            heads=HeadSettings(rank, alpha, config.EPOCHS, config.LEARNING_RATE, config.BATCH_SIZE, config.SEED),
            device=self.device, progress=self.progress)
        with timing.stage("fitting"):
            cls_scorer = fit_scorer(config.SCORER, heads.embed(cls_tokens), bank_size=0, seed=config.SEED)
        preview = [] if training is None else [
            {"image": s.image, "mask": s.mask if s.defect else None, "title": f"{s.stage}{' + ' + s.defect if s.defect else ''}"}
            for s in samples]
        return ScaleModel(image_size, heads, cls_scorer, patch_scorer, illumination, losses=losses,
                          synthetic_preview=preview, discount_saturated=discount)

    # -- scoring ----------------------------------------------------------------------------
    def raw_scores(self, scale: ScaleModel, paths: Sequence[Path], desc: str,
                   keep_inputs: Collection[int] = ()) -> RawScores:
        """Per image: CLS distance, patch distance grid, input size and CLS embedding at one scale.

        An unreadable image keeps placeholders (an empty grid, input size (0, 0)); see ``raw_scores``.
        The decoded inputs of the images at ``keep_inputs`` (indices into ``paths``) are kept in
        ``self.kept_inputs`` (uint8 ``[3, h, w]`` by path), for use after the pass without a second decode.
        """
        raw = RawScores.empty(len(paths), self.extractor.dim)
        for indices, features, _, pixels, shifted in self.features(paths, scale.image_size, desc, scale.illumination,
                                                                   pixels=bool(keep_inputs), shifts=self._shifts()[1:]):
            self._score_batch(scale, indices, [features, *shifted], raw)
            for row, index in enumerate(indices):
                if index in keep_inputs:
                    self.kept_inputs[Path(paths[index])] = pixels[row]
        return raw

    def raw_scores_of_images(self, scale: ScaleModel, images: Sequence[torch.Tensor]) -> RawScores:
        """``raw_scores`` of in-memory images ``[3, h, w]`` in [0, 1] already at this scale's input size.

        A batch at a time, so that only one batch's float features exist at once (60 calibration
        images of 4224x1056 at 448 would hold 0.4 GB of ViT-S features, twice that for ViT-B).
        """
        raw = RawScores.empty(len(images), self.extractor.dim)
        for start in range(0, len(images), self.config.BATCH_SIZE):
            chunk = images[start:start + self.config.BATCH_SIZE]
            phases = [self.forward_tensors(chunk, scale.illumination, shift) for shift in self._shifts()]
            for index, per_phase in enumerate(zip(*phases), start):
                self._score_batch(scale, [index], [
                    Features(f.cls[None], f.patches[None], None if f.attention is None else f.attention[None],
                             f.saturated[None]) for f in per_phase], raw)
        return raw

    def _shifts(self) -> list[tuple[int, int]]:
        """The input shifts of the scoring phases (``SCORING_PHASES``), the image itself first."""
        return phase_shifts(self.config.SCORING_PHASES, self.extractor.patch_size)

    def _score_batch(self, scale: ScaleModel, indices: list[int], phases: Sequence[Features], raw: RawScores) -> None:
        """Score a batch into rows ``indices`` of ``raw``: ``phases``, its features at each scoring phase (the
        unshifted inputs first, whose CLS token alone is scored); grids ``[gh, gw]``, ``[P, gh, gw]`` for P > 1."""
        with timing.stage("scoring"):
            gh, gw = phases[0].patches.shape[1:3]
            cls_embedding = scale.heads.embed(phases[0].cls)
            cls_distance = scale.cls_scorer.distances(cls_embedding)
            grids: list[list[torch.Tensor]] = [[] for _ in indices]
            peaks: list[list[float]] = [[] for _ in indices]
            for features in phases:  # a shifted phase's grid lacks the image's last row and/or column
                shape = features.patches.shape[:3]
                embedded = scale.heads.embed(features.patches.reshape(-1, features.patches.shape[-1]))
                distances = scale.patch_scorer.distances(embedded).reshape(shape)
                image_distances = scale.patch_scorer.image_distances(embedded)  # None: the map's distances serve
                if image_distances is not None:
                    image_distances = image_distances.reshape(shape)
                for row in range(len(indices)):
                    attention = None if features.attention is None else features.attention[row]
                    saturated = features.saturated[row] if scale.discount_saturated else None
                    shaped = lambda grid: patch_grid(
                        self.method.patch_distances(grid, float(cls_distance[row]), attention), saturated)
                    grid = shaped(distances[row])
                    peaks[row].append(peak_score(grid if image_distances is None else shaped(image_distances[row])))
                    grids[row].append(grid)
            patch = self.extractor.patch_size
            for row, index in enumerate(indices):
                raw.cls_distances[index] = float(cls_distance[row])
                raw.grids[index] = stacked_phases(grids[row], (gh, gw))
                raw.peaks[index] = float(np.mean(peaks[row]))
                raw.input_sizes[index] = (gh * patch, gw * patch)
            raw.embeddings[indices] = cls_embedding.numpy()


def raw_scores(runner: Runner, scales: Sequence[ScaleModel], paths: Sequence[Path], desc: str,
               keep_inputs: Collection[int] = ()) -> tuple[list[int], list[RawScores]]:
    """The readable images among ``paths`` (their indices, ascending) and, per scale, their ``RawScores``.

    An image unreadable in any pass of the run is left out at every scale (it is in ``runner.unreadable``).
    ``keep_inputs``: images whose decoded inputs at the first scale stay in ``runner.kept_inputs``.
    """
    raws = [runner.raw_scores(scale, paths, f"{desc} @{scale.image_size}", keep_inputs if number == 0 else ())
            for number, scale in enumerate(scales)]
    kept = [index for index, path in enumerate(paths) if Path(path) not in runner.unreadable]
    return kept, [raw.subset(kept) for raw in raws]


def fit_category(runner: Runner, data: dataset_ad2.CategoryData, category_dir: Path, dataset_fingerprint: str,
                 notes: list[str]) -> CategoryModel:
    """Fit a category's model, score validation and test_public, and save everything under ``category_dir``.

    Writes ``maps/``, ``scores.csv``, ``embeddings.npy``, ``model/`` and, last, ``fit.json``
    (seconds, losses, the fingerprint of the dataset listing the model was made from, and the
    images left out as unreadable). An unreadable image gets no row in ``scores.csv`` and no map.
    """
    config, method = runner.config, runner.method
    start = time.perf_counter()
    torch.manual_seed(config.SEED)
    scales = [runner.fit_scale(data.train, size) for size in method.image_sizes(config)]
    train = [s for s in data.train if s.path not in runner.unreadable]
    validation = data.validation
    if not validation:
        notes.append(f"{data.name}: no validation/good images; {TRAIN_AS_VALIDATION}")
        validation = train
    scored, raws, n_val = _readable_scores(runner, scales, validation, data.test_public)
    if not n_val:  # only unreadable validation images: as if there were none (the test images are scored again)
        notes.append(f"{data.name}: no readable validation/good image; {TRAIN_AS_VALIDATION}")
        scored, raws, n_val = _readable_scores(runner, scales, train, data.test_public)
    for scale, raw in zip(scales, raws):
        scale.fusion, problems = fit_fusion(raw.subset(range(n_val)))
        notes += [f"{data.name} @{scale.image_size}: {problem}" for problem in problems]
    fit_map_medians(scales, [raw.subset(range(n_val)) for raw in raws], config.CENTRE_MAPS)
    image_scores = fused_scores(method, scales, raws)

    rows = []
    for index, sample in enumerate(tqdm(scored, desc="anomaly maps", unit="img", leave=False,
                                        disable=not runner.progress or None)):
        with timing.stage("maps"):
            full = full_size_map(scales, raws, index, dataset_ad2.image_size(sample.path))
            model_io.write_map_tiff(map_path(category_dir, sample.relative_path), full)
        rows.append({"relative_path": sample.relative_path, "split": "validation" if index < n_val else sample.split,
                     "label": sample.label, "lighting": sample.lighting, "image_score": float(image_scores[index])})
    write_scores_csv(category_dir / "scores.csv", rows)
    if scales[0].synthetic_preview:
        plots.plot_synthetic_samples(category_dir / "synthetic_samples.png", scales[0].synthetic_preview)
    embeddings = np.concatenate([raw.embeddings for raw in raws], axis=1)
    with model_io.atomic_path(category_dir / "embeddings.npy") as temporary:
        np.save(temporary, embeddings.astype(np.float16))

    validation_raws = [raw.subset(range(n_val)) for raw in raws]
    kept = [runner.kept_inputs.pop(s.path) for s in scored[:n_val]]  # decoded in the scoring pass above
    runner.kept_inputs.clear()
    thresholds = calibrate_thresholds(runner, scales, lambda i: kept[i].float().div(255.0), validation_raws,
                                      config.SEED)
    if thresholds.record["baseline_rule_fallback"]:
        notes.append(f"{data.name}: F1 on synthetic defects was undefined for the "
                     f"{' and '.join(thresholds.record['baseline_rule_fallback'])} threshold; it uses the baseline "
                     "rule (validation mean + 3 std) instead.")
    model = CategoryModel(data.name, scales, image_threshold=thresholds.image, pixel_threshold=thresholds.pixel,
                          settings=model_settings(config, method))
    model.save(category_dir / "model")
    model_io.write_json_atomic(category_dir / "fit.json", {
        "seconds": time.perf_counter() - start,
        "losses": scales[0].losses if len(scales) == 1 else [s.losses for s in scales],
        "thresholds": thresholds.record,
        "dataset": dataset_fingerprint,
        SKIPPED_KEY: runner.unreadable_among(s.path for split in ("train", "validation", "test_public")
                                             for s in data.split(split))})
    return model


def _readable_scores(runner: Runner, scales: Sequence[ScaleModel], validation: Sequence[dataset_ad2.Sample],
                     test: Sequence[dataset_ad2.Sample]) -> tuple[list[dataset_ad2.Sample], list[RawScores], int]:
    """The readable images of ``validation + test`` (one backbone pass), their raw scores per scale,
    and how many of them are validation images (they come first). The validation images' decoded
    inputs stay in ``runner.kept_inputs`` for the thresholds' calibration."""
    scored = list(validation) + list(test)
    kept, raws = raw_scores(runner, scales, [s.path for s in scored], "score",
                            keep_inputs=set(range(len(validation))))
    return [scored[i] for i in kept], raws, sum(index < len(validation) for index in kept)

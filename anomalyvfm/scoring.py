"""Scoring normal-vs-anomalous: Gaussian (Mahalanobis) or nearest-neighbour distances,
anomaly maps at the original image size, and the image score.

Anomaly map: patch distances ``[gh, gw]`` -> centred on the validation images' median
(``centred_grid``, with ``CENTRE_MAPS``) -> bilinear to the network input size -> Gaussian
blur (sigma ``MAP_SIGMA`` input pixels) -> bilinear to the original ``[H, W]``. With
``SCORING_PHASES`` above 1 an image is also scored with its input moved by half a patch
(``phase_shifts``, ``shifted_inputs``): its grids ``[P, gh, gw]`` are each centred, upsampled,
moved back onto the image and averaged before the blur.

Image score: z-scores of the CLS token's distance and of the image's peak patch distance (the
mean of its ``PEAK_PATCHES`` highest) above its own median (``peak_score``), each standardised
with the validation (normal) images' statistics (``ScoreFusion``); the method combines them
(v1.1: the peak term alone).

Saturated pixels (``DISCOUNT_SATURATED``): a patch whose pixels the camera clipped at its top
level shows no surface there, only light, so its distance above the image's median counts in
proportion to its pixels that are not clipped (``saturated_share``, ``discount_saturated``),
in the map and in the image score alike; only in a category whose training images clip too
(``clipping_is_normal``).
"""

from __future__ import annotations

from typing import Callable, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from sklearn.covariance import ledoit_wolf

MAP_SIGMA = 4.0  # input pixels; best of 0 / 4 / 8 / 16 at 448 on both shared datasets (scale_probe.py blur)
MAX_FIT_TOKENS = 60_000  # Gaussian fit on a seeded subsample: the covariance is stable long before this
CHUNK = 16_384
# Patches averaged into the image score's peak; 1 to 8 measured at 448 on both shared datasets and their
# lighting-stressed copies (image_score_probe.py): 3 is best in the mean, regular and pooled (1.4.0; was 1).
PEAK_PATCHES = 3
# A network input value (in [0, 1]) at or above this in any channel counts as clipped by the camera:
# a little below 1 because compression rings around a clipped highlight stay within a few levels of 255.
SATURATION_LEVEL = 250 / 255
# Clipped highlights are discounted only where normal images have them: at least this share of the training
# images holds a clipped pixel (tyre 48 %, magtile 57 %; the demo's categories none, and there more light clips
# the defects brighter than the surface first, docs/Lighting_and_Thresholds.md).
MIN_CLIPPING_TRAIN_IMAGES = 0.05
# The input shifts (down, right) in half patches of the scoring phases, in the order SCORING_PHASES takes them:
# the image itself, then diagonally, then right and down (docs/Heads_and_Scoring.md, "Half-patch phases").
PHASE_SHIFTS = ((0, 0), (1, 1), (0, 1), (1, 0))


class GaussianScorer:
    """Mahalanobis distance to a Gaussian with Ledoit-Wolf shrinkage of the covariance.

    The shrunk covariance is always positive definite, so its inverse exists even when
    there are fewer normal samples than dimensions.
    """

    kind = "mahalanobis"

    def __init__(self, mean: torch.Tensor, precision: torch.Tensor) -> None:
        self.mean, self.precision = mean.float(), precision.float()

    @classmethod
    def fit(cls, features: torch.Tensor, seed: int = 0) -> "GaussianScorer":
        """features: ``[N, d]`` normal embeddings."""
        sample = _subsample(features, MAX_FIT_TOKENS, seed).double().numpy()
        covariance, _ = ledoit_wolf(sample, assume_centered=False)
        precision = np.linalg.inv(covariance)
        return cls(torch.from_numpy(sample.mean(0)), torch.from_numpy((precision + precision.T) / 2))

    def distances(self, features: torch.Tensor) -> torch.Tensor:
        """``[M, d]`` -> ``[M]`` Mahalanobis distances (square root of the quadratic form)."""
        out = []
        for part in features.split(CHUNK):
            centred = part.float() - self.mean
            out.append(((centred @ self.precision) * centred).sum(-1).clamp_min(0).sqrt())
        return torch.cat(out) if out else features.new_zeros(0)

    def image_distances(self, features: torch.Tensor) -> None:
        """The image score uses ``distances`` (no search of its own)."""
        return None

    def state(self) -> dict[str, torch.Tensor]:
        return {"mean": self.mean, "precision": self.precision}


class NearestNeighbourScorer:
    """Cosine distance ``1 - max cos`` to the nearest normal token in a memory bank (as AnomalyDINO),
    optionally in a whitened space (``whitening``, see ``whitening_matrix``): bank and queries are both
    mapped by it before the cosine.

    A whitened search sharpens the maps but ranks images worse (docs/Heads_and_Scoring.md), so with a
    whitening the image score gets a plain-cosine search of its own (``image_distances``) against the
    bank's first ``image_bank_size`` rows: a greedy coreset's selection order makes them a coreset of
    that size. ``bank_size > 0`` keeps a seeded random subsample of that many tokens (0 keeps all).
    """

    kind = "knn"

    def __init__(self, bank: torch.Tensor, whitening: torch.Tensor | None = None, image_bank_size: int = 0) -> None:
        """bank: ``[n, d]`` normal embeddings; whitening: ``[d, d]`` or None (plain cosine);
        image_bank_size: rows of ``bank`` the image score searches when whitened (0: none, it uses ``distances``)."""
        self.whitening = None if whitening is None else whitening.float()
        self.bank = F.normalize(self._mapped(bank), dim=-1)
        use_image_bank = whitening is not None and image_bank_size > 0
        self.image_bank = F.normalize(bank[:image_bank_size].float(), dim=-1) if use_image_bank else None

    @classmethod
    def fit(cls, features: torch.Tensor, bank_size: int = 0, seed: int = 0,
            whitening: torch.Tensor | None = None, image_bank_size: int = 0) -> "NearestNeighbourScorer":
        return cls(_subsample(features, bank_size, seed) if bank_size else features, whitening, image_bank_size)

    @classmethod
    def from_state(cls, state: dict[str, torch.Tensor]) -> "NearestNeighbourScorer":
        """The scorer ``state()`` describes (its banks are stored mapped and normalised)."""
        scorer = cls.__new__(cls)
        scorer.bank, scorer.whitening = state["bank"].float(), state.get("whitening")
        scorer.image_bank = None if state.get("image_bank") is None else state["image_bank"].float()
        return scorer

    def _mapped(self, features: torch.Tensor) -> torch.Tensor:
        return features.float() if self.whitening is None else features.float() @ self.whitening

    def distances(self, features: torch.Tensor) -> torch.Tensor:
        """``[M, d]`` -> ``[M]``, chunked matrix products (never an [M, N] matrix at once)."""
        return _cosine_distances(features, self.bank, self._mapped)

    def image_distances(self, features: torch.Tensor) -> torch.Tensor | None:
        """``[M, d]`` -> ``[M]`` plain cosine distances to the image bank, or None: the image score uses ``distances``."""
        return None if self.image_bank is None else _cosine_distances(features, self.image_bank, lambda x: x.float())

    def state(self) -> dict[str, torch.Tensor]:
        return ({"bank": self.bank} | ({} if self.whitening is None else {"whitening": self.whitening})
                | ({} if self.image_bank is None else {"image_bank": self.image_bank}))


def _cosine_distances(features: torch.Tensor, bank: torch.Tensor,
                      mapped: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``1 - max cos`` of ``mapped(features)`` ``[M, d]`` to the unit rows of ``bank`` ``[n, d]``: ``[M]``."""
    out = []
    for part in features.split(2048):
        part = F.normalize(mapped(part), dim=-1)
        best = torch.full((len(part),), -1.0)
        for rows in bank.split(CHUNK):
            best = torch.maximum(best, (part @ rows.T).max(-1).values)
        out.append((1.0 - best).clamp_min(0))
    return torch.cat(out) if out else features.new_zeros(0)


def whitening_matrix(features: torch.Tensor, shrinkage: float, nuisance: torch.Tensor | None = None,
                     nuisance_weight: float = 0.0) -> torch.Tensor:
    """``[d, d]`` map ``W = C^(-1/2)`` of the normal embeddings ``features`` ``[N, d]``, with their covariance
    shrunk towards its mean eigenvalue: ``C = (1 - shrinkage) S + shrinkage * mean(eig(S)) I``.

    In the mapped space the cosine kNN weighs directions by how little normal tokens vary along them (a
    Mahalanobis metric, Rippel et al.: the low-variance directions of normal data carry the anomaly
    signal), while the shrinkage keeps the near-empty directions from turning noise into distance.
    ``shrinkage`` 1 is the identity up to scale (plain cosine); it must be in (0, 1].

    ``nuisance`` ``[M, d]``: how normal embeddings move under changes that are not defects (a token under
    synthetic lighting or noise minus the same content's token in regular light). Their scatter
    ``E[n n^T]`` is added to the covariance with ``nuisance_weight`` (``S = cov + w E[n n^T]``), so the
    metric also counts those moves as normal variation instead of distance.
    """
    if not 0.0 < shrinkage <= 1.0:
        raise ValueError(f"shrinkage must be in (0, 1], got {shrinkage}")
    if nuisance_weight < 0:
        raise ValueError(f"nuisance_weight must be >= 0, got {nuisance_weight}")
    covariance = torch.cov(features.double().T)
    if nuisance is not None and len(nuisance) and nuisance_weight > 0:
        moves = nuisance.double()
        covariance = covariance + nuisance_weight * (moves.T @ moves) / len(moves)
    eigenvalues, vectors = torch.linalg.eigh(covariance)
    eigenvalues = eigenvalues.clamp_min(0)
    shrunk = (1.0 - shrinkage) * eigenvalues + shrinkage * eigenvalues.mean()
    return (vectors @ torch.diag(shrunk.rsqrt()) @ vectors.T).float()


Scorer = GaussianScorer | NearestNeighbourScorer

CORESET_DIM = 128  # PatchCore's random projection for the coreset search: distances kept within a few %
CORESET_CANDIDATES = 64  # farthest points a batch of greedy steps is taken among (speed only: same selection)


def coreset_projection(dim: int, seed: int) -> torch.Tensor:
    """A seeded Gaussian random projection ``[dim, CORESET_DIM]`` (Johnson-Lindenstrauss), or the identity
    when ``dim`` is already that small."""
    if dim <= CORESET_DIM:
        return torch.eye(dim)
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(dim, CORESET_DIM, generator=generator) / CORESET_DIM ** 0.5


def greedy_coreset(points: torch.Tensor, size: int, seed: int, candidates: int = CORESET_CANDIDATES) -> torch.Tensor:
    """Indices ``[size]`` (selection order) of a greedy k-center coreset of ``points`` ``[N, d]`` (PatchCore).

    Start at a seeded random point; repeatedly add the point farthest (Euclidean) from every point
    chosen so far. The result covers every point within the smallest radius the greedy reaches, so a
    nearest-neighbour bank keeps the rare normal appearances a random subsample loses.

    The plain greedy's selection (up to float rounding in near-ties), in batches: distances only
    shrink, so while one of the ``candidates`` farthest points stays farther than the next farthest
    point was, it is the next choice; steps are taken among those few points alone, and every other
    point is updated once per batch, by one ``[rows, batch]`` product instead of a pass per step.
    Rows: by the triangle inequality, a point within half its nearest centre's distance of every new
    centre cannot get closer to one, and is skipped. ``size >= N`` returns every index.
    """
    count = len(points)
    if size >= count:
        return torch.arange(count)
    x = points.detach().float().contiguous()
    norms = (x * x).sum(-1)
    generator = torch.Generator().manual_seed(seed)
    chosen = np.empty(size, dtype=np.int64)
    chosen[0] = int(torch.randint(count, (1,), generator=generator))
    centres, centre_norms = torch.empty(size, x.shape[1]), torch.empty(size)
    centres[0], centre_norms[0] = x[chosen[0]], norms[chosen[0]]
    # Per-point bookkeeping in NumPy, whose fancy indexing, masks and argmax over [N] are cheaper than torch's.
    nearest = _euclidean(x, norms, centres[:1], centre_norms[:1])[:, 0].numpy().copy()  # [N] to the nearest centre
    owner = np.zeros(count, dtype=np.int64)                                             # [N] that centre
    top = min(candidates, count - 1)
    k = 1
    while k < size:
        order = np.argpartition(nearest, count - top - 1)
        batch_rows, bound = order[count - top:], nearest[order[count - top - 1]]  # every other point is at most `bound` away
        rows_t = torch.from_numpy(batch_rows)
        batch_x, batch_norms, batch_nearest = x[rows_t], norms[rows_t], nearest[batch_rows].copy()
        first = k
        while k < size:
            best = int(batch_nearest.argmax())
            if k > first and not batch_nearest[best] > bound:
                break
            new = int(batch_rows[best])
            chosen[k], centres[k], centre_norms[k] = new, x[new], norms[new]
            np.minimum(batch_nearest, _euclidean(batch_x, batch_norms, centres[k:k + 1], centre_norms[k:k + 1])[:, 0].numpy(),
                       out=batch_nearest)
            k += 1
        new_centres, new_norms = centres[first:k], centre_norms[first:k]
        between = _euclidean(centres[:k], centre_norms[:k], new_centres, new_norms).numpy().min(1)  # [k]
        rows = np.flatnonzero(between[owner] < 2 * nearest)
        for part in np.array_split(rows, max(1, len(rows) // 65_536)):
            part_t = torch.from_numpy(part)
            distance = _euclidean(x[part_t], norms[part_t], new_centres, new_norms).numpy()  # [rows, batch]
            which = distance.argmin(1)
            value = distance[np.arange(len(part)), which]
            closer = value < nearest[part]
            nearest[part[closer]], owner[part[closer]] = value[closer], which[closer] + first
    return torch.from_numpy(chosen)


def _euclidean(points: torch.Tensor, norms: torch.Tensor, centres: torch.Tensor, centre_norms: torch.Tensor) -> torch.Tensor:
    """Distances ``[N, b]`` of ``points`` ``[N, d]`` (squared norms ``[N]``) to ``centres`` ``[b, d]`` (``[b]``)."""
    return (norms[:, None] - 2 * (points @ centres.T) + centre_norms[None, :]).clamp_min(0).sqrt()


def fit_scorer(kind: str, features: torch.Tensor, *, bank_size: int, seed: int,
               whitening: torch.Tensor | None = None, image_bank_size: int = 0) -> Scorer:
    """``whitening``, ``image_bank_size``: the kNN's (``NearestNeighbourScorer``); the Gaussian has its own metric."""
    if kind == "mahalanobis":
        return GaussianScorer.fit(features, seed)
    return NearestNeighbourScorer.fit(features, bank_size, seed, whitening, image_bank_size)


def scorer_from_state(kind: str, state: dict[str, torch.Tensor]) -> Scorer:
    return (GaussianScorer(state["mean"], state["precision"]) if kind == "mahalanobis"
            else NearestNeighbourScorer.from_state(state))


def _subsample(features: torch.Tensor, limit: int, seed: int) -> torch.Tensor:
    if len(features) <= limit:
        return features
    generator = torch.Generator().manual_seed(seed)
    return features[torch.randperm(len(features), generator=generator)[:limit].sort().values]


def peak_score(patch_scores: torch.Tensor, patches: int = PEAK_PATCHES) -> float:
    """An image's peak patch distance above its own median patch distance (``[gh, gw]`` -> float).

    The peak is the mean of the ``patches`` highest patch distances (all of them in a smaller grid): near the maximum, as
    PatchCore's image score, because AD 2's defects can cover a handful of patches of a 4 096-patch
    grid, which a mean over the top 1 % dilutes; a few patches rather than one, because a single
    patch spikes on noise and stray texture where a defect raises its neighbours too. Less the
    median, as the centred maps (``centred_grid``): it ranks images as the peaks of their centred
    maps do, so a lighting change that raises every patch of an image does not raise its score
    (docs/Heads_and_Scoring.md).
    """
    flat = patch_scores.flatten()
    peak = flat.topk(min(patches, flat.numel())).values.mean()
    return float(peak - flat.median())


def saturated_share(images: torch.Tensor, patch_size: int) -> torch.Tensor:
    """Per patch, the share of its pixels clipped at the top (``SATURATION_LEVEL``) in any channel.

    ``images`` ``[B, 3, h, w]`` in [0, 1], as decoded, before the illumination step (which rescales
    clipped pixels below the level); h and w multiples of ``patch_size``. Returns ``[B, gh, gw]`` in [0, 1].
    """
    clipped = (images.amax(1, keepdim=True) >= SATURATION_LEVEL).float()
    return F.avg_pool2d(clipped, patch_size)[:, 0]


def clipping_is_normal(train_saturated: list[torch.Tensor]) -> bool:
    """Whether a category's normal images clip: at least ``MIN_CLIPPING_TRAIN_IMAGES`` of its training images'
    ``saturated_share`` grids ``[gh, gw]`` hold a clipped pixel.

    Where the surface's highlights clip in normal light, more light makes them bloom, and a clipped
    patch is most likely such a highlight. Where no normal image clips, nothing normal is that
    bright, and what clips first under more light can be the defect (a bright stain on a dark cloth).
    """
    clipping = sum(bool((grid > 0).any()) for grid in train_saturated)
    return bool(train_saturated) and clipping >= MIN_CLIPPING_TRAIN_IMAGES * len(train_saturated)


def discount_saturated(patch_scores: torch.Tensor, saturated: torch.Tensor) -> torch.Tensor:
    """``[gh, gw]`` patch distances, each one's excess over the grid's median scaled by the share of its
    pixels that are not saturated (``saturated`` ``[gh, gw]``, ``saturated_share``).

    A fully clipped patch sits at the median: an overexposed highlight is no evidence of a defect
    (on the shared datasets' lighting-stressed copies it was where good overexposed images peaked,
    docs/Lighting_and_Thresholds.md). Values move towards the median, never past it, so the
    median, and with it ``peak_score``'s and ``centred_grid``'s reference, is unchanged.
    """
    median = patch_scores.flatten().median()
    return median + (patch_scores - median) * (1 - saturated.to(patch_scores.dtype))


def patch_grid(patch_scores: torch.Tensor, saturated: torch.Tensor | None) -> torch.Tensor:
    """An image's ``[gh, gw]`` patch distances as its map and score take them: ``discount_saturated`` by
    ``saturated`` ``[gh, gw]``, or as they are when it is None (``DISCOUNT_SATURATED`` false, or a category whose
    training images never clip: ``clipping_is_normal``)."""
    return patch_scores if saturated is None else discount_saturated(patch_scores, saturated)


def phase_shifts(phases: int, patch_size: int) -> list[tuple[int, int]]:
    """The input shifts ``(down, right)`` in pixels of the first ``phases`` of ``PHASE_SHIFTS``."""
    if not 1 <= phases <= len(PHASE_SHIFTS):
        raise ValueError(f"phases must be 1 to {len(PHASE_SHIFTS)}, got {phases}")
    half = patch_size // 2
    return [(down * half, right * half) for down, right in PHASE_SHIFTS[:phases]]


def shifted_inputs(images: torch.Tensor, shift: tuple[int, int], patch_size: int) -> torch.Tensor:
    """``[B, 3, h, w]`` network inputs cropped to start ``shift`` ``(down, right)`` pixels in, and to end a whole
    patch from there (the last, partial patch of a shifted axis dropped): ``[B, 3, h', w']``, multiples of
    ``patch_size``. The crop's patch grid falls between the image's own; nothing is invented at the edges
    (a padded strip is a texture no normal image has, and was scored as one)."""
    down, right = shift
    height, width = images.shape[-2:]
    return images[..., down:height - (patch_size - down if down else 0), right:width - (patch_size - right if right else 0)]


def padded_grid(patch_scores: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """A shifted phase's ``[gh', gw']`` grid brought to the image's own grid ``shape`` ``(gh, gw)`` by repeating
    its last row and column: after the move back, that cell lies half a patch past the image's far edge, so
    its value only fills in the half patch the phase did not see."""
    rows, columns = shape[0] - patch_scores.shape[0], shape[1] - patch_scores.shape[1]
    if not (rows or columns):
        return patch_scores
    return F.pad(patch_scores[None, None], (0, columns, 0, rows), mode="replicate")[0, 0]


def stacked_phases(grids: Sequence[torch.Tensor], shape: tuple[int, int]) -> torch.Tensor:
    """One image's map grid from its scoring phases' grids (the image itself first): each brought to the image's
    own grid ``shape`` (``padded_grid``); ``[gh, gw]`` for one phase, else stacked, ``[P, gh, gw]``."""
    padded = [padded_grid(grid, shape) for grid in grids]
    return padded[0] if len(padded) == 1 else torch.stack(padded)


def centred_grid(patch_scores: torch.Tensor, reference: float) -> torch.Tensor:
    """``[gh, gw]`` patch distances shifted so that their median equals ``reference`` (``[P, gh, gw]``: each
    phase's grid by its own median).

    A lighting change, or an image whose texture sits a little farther from the training
    images, raises every patch of it; one pixel threshold over all images then flags the
    whole image or misses defects elsewhere. The median patch is normal in any image whose
    defects cover less than half of it, so removing the image's own median removes that offset
    and keeps what stands out locally. ``reference`` (``map_median_of`` the validation
    images) keeps the values on the scale of distances, so thresholds read as before.
    """
    medians = patch_scores.flatten(-2).median(-1).values
    return patch_scores - medians[..., None, None] + reference


def map_median_of(grids: list[torch.Tensor]) -> float:
    """The mean over images of each ``[gh, gw]`` grid's median: the reference ``centred_grid`` shifts to."""
    return float(np.mean([float(g.median()) for g in grids])) if grids else 0.0


def anomaly_map(patch_scores: torch.Tensor, input_size: tuple[int, int], original_size: tuple[int, int],
                *, sigma: float = MAP_SIGMA, shifts: Sequence[tuple[int, int]] | None = None) -> np.ndarray:
    """Patch distances ``[gh, gw]`` -> float32 anomaly map ``[H, W]`` at the original size.

    ``[P, gh, gw]``: the grids of ``P`` scoring phases, each upsampled, moved back by its input's shift
    (``shifts``; by default ``phase_shifts(P, patch size)``) and averaged. ``sigma``: the Gaussian blur at the
    network input's scale, in input pixels (0: none). OpenCV on float32: its bilinear resize samples pixel
    centres exactly as torch's ``align_corners=False`` and is ~25x faster on 5-megapixel maps.
    """
    grids = patch_scores.float().reshape(-1, *patch_scores.shape[-2:]).numpy()
    height, width = input_size
    if shifts is None:
        shifts = phase_shifts(len(grids), height // grids.shape[1])
    upsampled = np.zeros(input_size, np.float32)
    for grid, (down, right) in zip(grids, shifts, strict=True):
        phase = cv2.resize(np.ascontiguousarray(grid), (width, height), interpolation=cv2.INTER_LINEAR)
        # Pixel (y, x) of a phase's input is pixel (y + down, x + right) of the image.
        upsampled += np.pad(phase, ((down, 0), (right, 0)), mode="edge")[:height, :width] if down or right else phase
    upsampled /= len(grids)
    smooth = _gaussian_blur(upsampled, sigma) if sigma > 0 else upsampled
    return cv2.resize(smooth, original_size[::-1], interpolation=cv2.INTER_LINEAR)


def _gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian of ``[h, w]`` float32, kernel radius 3 sigma, edges replicated."""
    width = 2 * int(3 * sigma + 0.5) + 1
    return cv2.GaussianBlur(image, (width, width), sigmaX=sigma, sigmaY=sigma, borderType=cv2.BORDER_REPLICATE)


class ScoreFusion:
    """The validation (normal) images' mean and spread of the CLS distance and of the peak score
    (``peak_score``); ``model.fused_scores`` standardises both with them before the method combines them."""

    def __init__(self, cls_mean: float, cls_std: float, patch_mean: float, patch_std: float) -> None:
        self.cls_mean, self.cls_std = cls_mean, max(cls_std, 1e-12)
        self.patch_mean, self.patch_std = patch_mean, max(patch_std, 1e-12)

    def state(self) -> dict[str, float]:
        return {"cls_mean": self.cls_mean, "cls_std": self.cls_std,
                "patch_mean": self.patch_mean, "patch_std": self.patch_std}

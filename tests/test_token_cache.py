"""The quality benchmark's token cache: the tokens a pipeline run scores, computed once, shared by stressed copies."""

import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import dataset_ad2  # noqa: E402
import lighting_stress  # noqa: E402
import token_cache  # noqa: E402
from anomalyvfm.backbone import FeatureExtractor, normalize, to_input  # noqa: E402
from anomalyvfm.illumination import IlluminationRange  # noqa: E402
from anomalyvfm.scoring import saturated_share  # noqa: E402


def test_tokens_are_the_pipelines_inputs_cached_once_and_shared_with_a_stressed_copy(
        tmp_path, monkeypatch, make_ad2_category, tiny_backbone):
    monkeypatch.setattr(token_cache, "CACHE_DIR", tmp_path / "cache")
    root = make_ad2_category(train=3, validation=2, test_good=1, test_bad=1, size=(28, 42))
    dark = root / "widget" / "test_public" / "good" / "000_regular.png"
    dark_image = Image.new("RGB", (42, 28), (2, 20, 40))  # far below the training images' brightness
    dark_image.paste((255, 255, 255), (0, 0, 14, 14))  # with one clipped highlight, a patch of the 28-pixel input
    dark_image.save(dark)
    extractor = FeatureExtractor(tiny_backbone, [1, 2])
    logged = []
    tokens = token_cache.pipeline_tokens(extractor, str(root), "widget", "tiny", 28, [1, 2], log=logged.append)
    assert sum("cached" in line for line in logged) == 3
    # Test images are scored as the pipeline scores them: projected onto the training illumination
    # range (the dark one is).
    train, test = tokens["train"], tokens["test_public"]
    illumination = IlluminationRange.of(train.channel_mean, train.channel_std, train.light_fields)
    outside = ~illumination.targets(test.channel_mean, test.channel_std)[2]
    assert outside.any()
    for index, sample in enumerate(test.samples):
        image = to_input(dataset_ad2.load_image(sample.path), test.input_sizes[index])[None]
        expected = extractor(normalize(illumination.apply(image))).patches[0].half()
        torch.testing.assert_close(test.patches[index], expected, atol=2e-3, rtol=0)
        # The clipped share is of the input as decoded, before the light is rescaled.
        torch.testing.assert_close(test.saturated[index], saturated_share(image, 14)[0])
    assert float(test.saturated[[s.path for s in test.samples].index(dark)][0, 0]) == 1.0
    # A second call reads everything from the cache: no backbone needed.
    again = token_cache.pipeline_tokens(None, str(root), "widget", "tiny", 28, [1, 2], log=logged.append)
    assert all(torch.equal(a, b) for a, b in zip(again["test_public"].patches, test.patches))
    # A stressed copy links train/ and validation/ to the source: their tokens are shared, the test is its own.
    stressed = lighting_stress.make_stressed_dataset(root, "widget", tmp_path / "stressed", variants_per_image=1)
    logged.clear()
    copy = token_cache.pipeline_tokens(extractor, str(stressed), "widget", "tiny", 28, [1, 2], log=logged.append)
    assert [line.split(":")[0] for line in logged if "cached" in line] == ["cached widget test_public @28"]
    assert len(copy["test_public"].samples) == 2 * len(test.samples)
    assert torch.equal(copy["train"].patches[0], train.patches[0])


@pytest.mark.parametrize("missing", ["light_fields", "saturated"])
def test_a_split_cached_before_light_fields_or_saturation_were_kept_gets_them_without_a_backbone_pass(
        tmp_path, monkeypatch, make_ad2_category, tiny_backbone, missing):
    monkeypatch.setattr(token_cache, "CACHE_DIR", tmp_path / "cache")
    root = make_ad2_category(train=3, validation=1, test_good=1, test_bad=1, size=(28, 42))
    extractor = FeatureExtractor(tiny_backbone, [1, 2])
    first = token_cache.pipeline_tokens(extractor, str(root), "widget", "tiny", 28, [1, 2], log=lambda _: None)
    (train_file,) = (tmp_path / "cache").glob("widget-28-train-*.pt")
    stored = torch.load(train_file, weights_only=True)
    del stored[missing]  # as cached by an earlier version
    torch.save(stored, train_file)
    logged = []
    again = token_cache.pipeline_tokens(extractor, str(root), "widget", "tiny", 28, [1, 2], log=logged.append)
    assert not any("cached" in line for line in logged)  # no split recomputed: the other keys still match
    torch.testing.assert_close(again["train"].light_fields, first["train"].light_fields)
    assert all(torch.equal(a, b) for a, b in zip(again["train"].saturated, first["train"].saturated))
    assert missing in torch.load(train_file, weights_only=True)  # kept for the next call


def test_layer_sets_cached_in_one_pass_equal_each_sets_own_extractor(tmp_path, monkeypatch, make_ad2_category,
                                                                     tiny_backbone):
    monkeypatch.setattr(token_cache, "CACHE_DIR", tmp_path / "cache")
    root = make_ad2_category(train=3, validation=2, test_good=1, test_bad=1, size=(28, 42))
    logged = []
    token_cache.cache_layer_sets(tiny_backbone, str(root), "widget", "tiny", 28, [[1, 2], [2]], log=logged.append)
    assert sum("for 2 layer sets" in line for line in logged) == 3  # one backbone pass per split
    for layers in ([1, 2], [2]):
        cached = token_cache.pipeline_tokens(None, str(root), "widget", "tiny", 28, layers,  # read, not computed
                                             log=lambda line: None)
        extractor = FeatureExtractor(tiny_backbone, layers)
        for split, tokens in cached.items():
            for index, sample in enumerate(tokens.samples):
                image = to_input(dataset_ad2.load_image(sample.path), tokens.input_sizes[index])[None]
                if split != "train":
                    train = cached["train"]
                    image = IlluminationRange.of(train.channel_mean, train.channel_std, train.light_fields).apply(image)
                features = extractor(normalize(image))
                torch.testing.assert_close(tokens.patches[index], features.patches[0].half(), atol=2e-3, rtol=0)
                torch.testing.assert_close(tokens.cls[index], features.cls[0], atol=1e-4, rtol=0)
    logged.clear()
    token_cache.cache_layer_sets(tiny_backbone, str(root), "widget", "tiny", 28, [[1, 2], [2]], log=logged.append)
    assert logged == []  # everything cached: no pass

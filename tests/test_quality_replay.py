"""The quality benchmark replays cached tokens through the product's code: its maps must be a run's maps."""

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

import anomaly_vfm_v11_lora as script  # noqa: E402
import dataset_ad2  # noqa: E402
import run_quality  # noqa: E402
import token_cache  # noqa: E402
from anomalyvfm import model_io  # noqa: E402
from anomalyvfm.backbone import FeatureExtractor, normalize, to_input  # noqa: E402
from anomalyvfm.illumination import IlluminationRange  # noqa: E402
from anomalyvfm.pipeline import run  # noqa: E402
from anomalyvfm.scoring import saturated_share, shifted_inputs  # noqa: E402


def test_a_quality_row_gives_the_maps_a_run_writes(demo_root, tiny_backbone, tmp_path, monkeypatch):
    phases = 2  # the phases' whole path: shifted tokens, padded and stacked grids, maps moved back and averaged
    monkeypatch.setattr(token_cache, "CACHE_DIR", tmp_path / "cache")
    category = dataset_ad2.list_categories(demo_root)[0]
    config = script.default_config().replace(
        DATA_ROOT=str(demo_root), CATEGORIES=[category], IMAGE_SIZE=56, FEATURE_LAYERS=[2], DEVICE="cpu",
        NUM_WORKERS=0, RESULTS_DIR=str(tmp_path / "results"), SCORING_PHASES=phases)
    run(config, backbone=tiny_backbone, progress=False)
    extractor = FeatureExtractor(tiny_backbone, config.FEATURE_LAYERS)
    tokens = token_cache.pipeline_tokens(extractor, str(demo_root), category, "tiny", 56, config.FEATURE_LAYERS,
                                         phases=phases, log=lambda _: None)
    with torch.inference_mode():
        synthetic = run_quality.synthetic_tokens(extractor, tokens["train"], 56, config.SYNTHETIC_SAMPLES, config.SEED)
    out = run_quality.row_outputs(tokens, synthetic, config)
    test = tokens["test_public"]
    saved = [model_io.read_map(tmp_path / "results" / category / "maps" / Path(s.relative_path).with_suffix(".tiff"))
             for s in test.samples]
    spread = max(float(np.ptp(m)) for m in saved)
    for replayed, written in zip(out.test_maps, saved, strict=True):
        assert replayed.shape == written.shape
        # Cached tokens are float16 (the run's float32): the heads and scorer fitted on them differ that little.
        np.testing.assert_allclose(replayed, written, atol=0.02 * spread)
    # Not one phase passed off as two: the single phase's maps differ from the two phases' by far more.
    single = run_quality.row_outputs(tokens, synthetic, config.replace(SCORING_PHASES=1))
    assert max(float(np.abs(a - b).max()) for a, b in zip(single.test_maps, out.test_maps)) > 0.1 * spread


def test_phase_tokens_are_the_cropped_inputs_through_the_runs_illumination_step(
        tmp_path, monkeypatch, make_ad2_category, tiny_backbone):
    monkeypatch.setattr(token_cache, "CACHE_DIR", tmp_path / "cache")
    root = make_ad2_category(train=3, validation=1, test_good=1, test_bad=1, size=(42, 56))
    extractor = FeatureExtractor(tiny_backbone, [1, 2])
    logged = []
    tokens = token_cache.pipeline_tokens(extractor, str(root), "widget", "tiny", 56, [1, 2], phases=4,
                                         log=logged.append)
    assert tokens["train"].phases == []  # the training images are never shifted
    train, test = tokens["train"], tokens["test_public"]
    assert [p.shift for p in test.phases] == [(7, 7), (0, 7), (7, 0)]
    illumination = IlluminationRange.of(train.channel_mean, train.channel_std, train.light_fields)
    for index, sample in enumerate(test.samples):
        image = to_input(dataset_ad2.load_image(sample.path), test.input_sizes[index])[None]
        for phase in test.phases:
            shifted = shifted_inputs(image, phase.shift, 14)
            expected = extractor(normalize(illumination.apply(shifted))).patches[0].half()
            torch.testing.assert_close(phase.patches[index], expected, atol=2e-3, rtol=0)
            torch.testing.assert_close(phase.saturated[index], saturated_share(shifted, 14)[0])
            assert phase.patches[index].shape[:2] != test.patches[index].shape[:2]  # a patch fewer on a shifted axis
    # Two phases read the first shift from the cache; asking for more phases than cached is refused when scoring.
    logged.clear()
    two = token_cache.pipeline_tokens(None, str(root), "widget", "tiny", 56, [1, 2], phases=2, log=logged.append)
    assert not any("cached" in line for line in logged)
    assert torch.equal(two["test_public"].phases[0].patches[0], test.phases[0].patches[0])
    settings = script.default_config().replace(IMAGE_SIZE=56, SCORING_PHASES=4)
    with pytest.raises(ValueError, match="SCORING_PHASES 4 needs tokens cached with phases=4; these have 2"):
        run_quality.phase_grids(None, None, two["test_public"], False, settings.SCORING_PHASES)


def test_main_writes_one_row_per_dataset_size_and_row_and_keeps_earlier_rows(make_ad2_category, tmp_path, monkeypatch,
                                                                              capsys):
    from tests.conftest import make_tiny_dinov2

    monkeypatch.setattr(token_cache, "CACHE_DIR", tmp_path / "cache")
    backbone = tmp_path / "tiny-dinov2"
    make_tiny_dinov2(10).save_pretrained(backbone)  # the default FEATURE_LAYERS reach block 10
    root = make_ad2_category(nested=True, train=4, validation=2, test_good=2, test_bad=3, size=(28, 42))
    output = tmp_path / "quality.json"
    common = [f"--datasets-root={root}", "--image-sizes=28", f"--backbone={backbone}", f"--output={output}",
              "--no-lighting-stress"]
    assert run_quality.main(common + ["--rows=kNN full bank"]) == 0
    assert run_quality.main(common + ["--rows=v1.1 --KNN_SHRINKAGE=1 --EPOCHS=0,Gaussian (untrained heads)"]) == 0
    report = json.loads(output.read_text())
    rows = [(e["dataset"], e["image_size"], e["row"]) for e in report["results"]]
    # The first run's row is kept; rows come in ROWS order.
    assert rows == [("widget", 28, "v1.1 --KNN_SHRINKAGE=1 --EPOCHS=0"), ("widget", 28, "kNN full bank"),
                    ("widget", 28, "Gaussian (untrained heads)")]
    assert all(0.0 <= e["metrics"]["au_pro_0.05"] <= 1.0 for e in report["results"])
    assert output.with_suffix(".md").is_file() and "kNN full bank" in capsys.readouterr().out


@pytest.mark.parametrize("argument, message", [("--image-sizes=30", "not a positive multiple of 14"),
                                               ("--image-sizes=", "--image-sizes is empty"),
                                               ("--rows=no such row", "unknown")])
def test_main_rejects_bad_options_before_loading_the_backbone(argument, message, tmp_path, capsys):
    assert run_quality.main([f"--datasets-root={tmp_path}", "--backbone=/nonexistent", argument]) == 2
    assert message in capsys.readouterr().err

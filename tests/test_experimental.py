"""The experimental versions run end to end and differ from v1.1 only where they claim to."""

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import anomaly_vfm_v11_lora as script
import dataset_ad2
from anomalyvfm.pipeline import Method, run

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experimental"))

from anomaly_vfm_v12_adaptive_lora import AdaptiveLoRA, participation_ratio  # noqa: E402
from anomaly_vfm_v13_multiscale_lora import MultiScaleLoRA  # noqa: E402
from anomaly_vfm_v14_attention_guided_lora import FLOOR, AttentionGuidedLoRA  # noqa: E402
from compare_versions import compare  # noqa: E402


def _config(demo_root, results_dir, **changes):
    return script.default_config().replace(
        DATA_ROOT=str(demo_root), CATEGORIES=dataset_ad2.list_categories(demo_root)[:1], IMAGE_SIZE=56,
        FEATURE_LAYERS=[2], RESULTS_DIR=str(results_dir), DEVICE="cpu", NUM_WORKERS=0, SYNTHETIC_SAMPLES=9,
        EPOCHS=2, **changes)


def test_participation_ratio_counts_effective_dimensions():
    generator = torch.Generator().manual_seed(0)
    isotropic = torch.randn(20000, 10, generator=generator)
    assert participation_ratio(isotropic) == pytest.approx(10, rel=0.05)
    one_direction = torch.randn(5000, 1, generator=generator) * torch.ones(1, 10)
    assert participation_ratio(one_direction) == pytest.approx(1, rel=1e-3)


def test_adaptive_rank_follows_the_dimensionality_rule():
    config = script.default_config()
    generator = torch.Generator().manual_seed(0)
    assert AdaptiveLoRA().lora_shape(config, torch.randn(20000, 64, generator=generator)) == (32, 64.0)
    assert AdaptiveLoRA().lora_shape(config, torch.randn(5000, 1, generator=generator).repeat(1, 64)) == (4, 8.0)
    assert Method().lora_shape(config, torch.randn(100, 64)) == (16, 32.0)


def test_multiscale_sizes_are_patch_multiples_around_image_size():
    config = script.default_config().replace(IMAGE_SIZE=224)
    assert MultiScaleLoRA().image_sizes(config) == [112, 224, 336]
    assert Method().image_sizes(config) == [224]


def test_attention_weighting_changes_scores_only_through_attention():
    method = AttentionGuidedLoRA()
    distances = torch.full((2, 3), 4.0)
    flat = method.patch_distances(distances, 1.0, torch.ones(2, 3))
    torch.testing.assert_close(flat, distances)  # uniform attention: unchanged
    peaked = torch.zeros(2, 3)
    peaked[0, 1] = 1.0
    weighted = method.patch_distances(distances, 1.0, peaked)
    assert weighted[0, 1] == 4.0 and weighted[1, 2] == 4.0 * FLOOR
    assert not torch.equal(weighted, method.patch_distances(distances, 1.0, peaked.flip(0)))


def _scores(folder: Path, category: str) -> dict[str, float]:
    with open(folder / category / "scores.csv", newline="") as handle:
        return {row["relative_path"]: float(row["image_score"]) for row in csv.DictReader(handle)}


def test_each_version_runs_end_to_end_and_differs_from_v11(demo_root, tiny_backbone, tmp_path):
    config = _config(demo_root, tmp_path)
    category = config.CATEGORIES[0]
    scores = {}
    for method in (Method(), AdaptiveLoRA(), MultiScaleLoRA(), AttentionGuidedLoRA()):
        folder = tmp_path / method.name
        metrics = run(config.replace(RESULTS_DIR=str(folder)), method, backbone=tiny_backbone, progress=False)
        assert 0.0 <= metrics[category]["image_auroc"] <= 1.0
        assert (folder / "performance_summary.txt").read_text().startswith(f"AnomalyVFM {method.name}")
        scores[method.name] = _scores(folder, category)
    model_files = sorted(p.name for p in (tmp_path / "v1.3-multiscale-lora" / category / "model").iterdir())
    assert model_files == ["model.json", "scale_28.safetensors", "scale_56.safetensors", "scale_84.safetensors"]
    for name in ("v1.2-adaptive-lora", "v1.3-multiscale-lora", "v1.4-attention-guided-lora"):
        assert scores[name].keys() == scores["v1.1"].keys()
        assert scores[name] != scores["v1.1"], f"{name} scores equal v1.1's"


def test_attention_guided_scores_follow_the_attention(demo_root, tiny_backbone, tmp_path):
    config = _config(demo_root, tmp_path)
    category = config.CATEGORIES[0]
    run(config.replace(RESULTS_DIR=str(tmp_path / "a")), AttentionGuidedLoRA(), backbone=tiny_backbone,
        progress=False)

    class Inverted(AttentionGuidedLoRA):
        def patch_distances(self, distances, cls_distance, attention):
            return super().patch_distances(distances, cls_distance, attention.max() - attention)

    run(config.replace(RESULTS_DIR=str(tmp_path / "b")), Inverted(), backbone=tiny_backbone, progress=False)
    assert _scores(tmp_path / "a", category) != _scores(tmp_path / "b", category)


def test_compare_versions_writes_the_version_table(demo_root, tiny_backbone, tmp_path):
    config = _config(demo_root, tmp_path)
    versions = {"v1.1": Method(), "v1.2 adaptive LoRA": AdaptiveLoRA()}
    rows = compare(config, versions, backbone=tiny_backbone, progress=False)
    assert [row["version"] for row in rows] == list(versions)
    with open(tmp_path / "compare" / "versions.csv", newline="") as handle:
        table = list(csv.DictReader(handle))
    assert [row["version"] for row in table] == list(versions)
    assert float(table[0]["image_auroc"]) == pytest.approx(rows[0]["image_auroc"], abs=1e-4)
    markdown = (tmp_path / "compare" / "versions.md").read_text()
    assert "| v1.2 adaptive LoRA |" in markdown and "AU-PRO@0.05" in markdown


@pytest.mark.parametrize("script_name", ["anomaly_vfm_v12_adaptive_lora.py", "anomaly_vfm_v13_multiscale_lora.py",
                                         "anomaly_vfm_v14_attention_guided_lora.py", "compare_versions.py"])
def test_every_experimental_script_answers_help(script_name):
    script_path = Path(__file__).resolve().parents[1] / "experimental" / script_name
    done = subprocess.run([sys.executable, str(script_path), "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert f"usage: {script_name}" in done.stdout and "  --IMAGE_SIZE=448  (int)" in done.stdout

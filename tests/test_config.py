"""Strict --NAME=value overrides, the validation of constants and the --help text."""

import dataclasses
from pathlib import Path

import pytest

import anomaly_vfm_v11_lora as script
from anomalyvfm.config import Config, ConfigError, apply_overrides, documented_settings, is_image_size, settings_help


def test_defaults_come_from_the_script_constants():
    config = script.default_config()
    assert config.BACKBONE == "facebook/dinov2-base"
    assert config.LORA_RANK == 16 and config.LORA_ALPHA == 32.0 and config.EPOCHS == 30
    assert config.SYNTHETIC_SAMPLES == 90 and config.SCORER == "knn" and config.DEVICE == "auto"
    assert config.CATEGORIES == ["can", "fabric", "fruit_jelly", "rice", "sheet_metal", "vial", "wallplugs", "walnuts"]


@pytest.mark.parametrize("size, valid", [(14, True), (448, True), (0, False), (-14, False), (225, False),
                                         (True, False), (448.0, False), ("448", False)])
def test_an_image_size_is_a_positive_int_multiple_of_the_patch_size(size, valid):
    # the one rule behind IMAGE_SIZE, a saved model's scales and the benchmarks' sizes
    assert is_image_size(size) is valid


def test_overrides_parse_types_case_insensitively():
    config = apply_overrides(script.default_config(), [
        "--categories=can,fabric", "--IMAGE_SIZE=224", "--learning_rate=5e-4", "--FORCE=true",
        "--feature_layers=6,9", "--LORA_ALPHA=16", "--EVALUATE_ONLY"])
    assert config.CATEGORIES == ["can", "fabric"]
    assert config.IMAGE_SIZE == 224 and config.LEARNING_RATE == 5e-4
    assert config.FORCE is True and config.EVALUATE_ONLY is True
    assert config.FEATURE_LAYERS == [6, 9] and config.LORA_ALPHA == 16.0


@pytest.mark.parametrize("argument, fragment", [
    ("--NOT_A_SETTING=1", "Unknown setting 'NOT_A_SETTING'"),
    ("--IMAGE_SIZE=big", "not a valid int"),
    ("--FORCE=yes", "not a valid true/false"),
    ("--FEATURE_LAYERS=a,b", "not a valid int"),
    ("IMAGE_SIZE=224", "expected --NAME=value"),
    ("--IMAGE_SIZE", "needs a value"),
])
def test_bad_overrides_are_short_errors_pointing_at_help(argument, fragment):
    with pytest.raises(ConfigError) as error:
        apply_overrides(script.default_config(), [argument])
    assert fragment in str(error.value)
    if "Unknown" in fragment or "expected" in fragment:
        assert "see --help" in str(error.value).lower() and "LORA_RANK" not in str(error.value)


def test_a_near_miss_suggests_the_setting():
    with pytest.raises(ConfigError, match="Did you mean --IMAGE_SIZE"):
        apply_overrides(script.default_config(), ["--imagesize=224"])


@pytest.mark.parametrize("change, fragment", [
    ({"IMAGE_SIZE": 225}, "multiple of 14"),
    ({"SCORER": "svm"}, "SCORER must be one of"),
    ({"DEVICE": "tpu"}, "DEVICE must be one of"),
    ({"SYNTHETIC_SAMPLES": 91}, "multiple of 3"),
    ({"FEATURE_LAYERS": [0]}, "counted from 1"),
    ({"CATEGORIES": []}, "at least one category"),
    ({"KNN_SHRINKAGE": 0.0}, r"KNN_SHRINKAGE must be in \(0, 1\]"),
    ({"KNN_SHRINKAGE": 1.5}, r"KNN_SHRINKAGE must be in \(0, 1\]"),
    ({"SCORING_PHASES": 3}, r"SCORING_PHASES must be one of 1, 2, 4, got 3"),
    ({"SCORING_PHASES": 0}, r"SCORING_PHASES must be one of 1, 2, 4, got 0"),
    ({"SCORING_PHASES": 2, "IMAGE_SIZE": 14}, r"SCORING_PHASES above 1 needs an IMAGE_SIZE of at least 28"),
    ({"KNN_IMAGE_BANK_SIZE": -1}, "KNN_IMAGE_BANK_SIZE must be >= 0"),
    ({"KNN_NUISANCE_WEIGHT": -0.5}, "KNN_NUISANCE_WEIGHT must be a finite number >= 0"),
    ({"KNN_NUISANCE_WEIGHT": float("nan")}, "KNN_NUISANCE_WEIGHT must be a finite number >= 0"),
])
def test_invalid_values_are_rejected(change, fragment):
    with pytest.raises(ConfigError, match=fragment):
        script.default_config().replace(**change)


def test_config_roundtrips_through_json(tmp_path):
    config = script.default_config().replace(CATEGORIES=["a"], IMAGE_SIZE=224)
    config.save(tmp_path / "config.json")
    assert Config.load(tmp_path / "config.json") == config


def test_demo_flag_sets_demo_data_but_command_line_wins():
    config = script.build_config(["--demo", "--IMAGE_SIZE=112"])
    assert config.DEMO and config.DATA_ROOT == script.DEMO_ROOT and config.IMAGE_SIZE == 112
    assert config.CATEGORIES and "can" not in config.CATEGORIES


def test_main_reports_config_errors_with_exit_code_2(capsys):
    assert script.main(["--NOPE=1"]) == 2
    error = capsys.readouterr().err
    assert "Unknown setting 'NOPE'" in error and "See --help" in error and len(error.splitlines()) == 1


@pytest.mark.parametrize("argument, expected", [("--NUM_WORKERS=auto", "auto"), ("--NUM_WORKERS=3", 3)])
def test_num_workers_is_auto_or_a_count(argument, expected):
    assert apply_overrides(script.default_config(), [argument]).NUM_WORKERS == expected


@pytest.mark.parametrize("value", ["lots", -1, 1.5])
def test_num_workers_rejects_anything_else(value):
    with pytest.raises(ConfigError, match="NUM_WORKERS must be 'auto' or an integer >= 0"):
        script.default_config().replace(NUM_WORKERS=value)


SOURCE = """# ------
# Configuration header, not a group
# ------
# Paths
ROOT = "a#b"          # where the data is
NAMES = ["x"]         # which folders;
                      # comma-separated on the command line
# Numbers
SIZE = 3              # pixels
# ------
AFTER = 1             # outside the block
"""


def test_documented_settings_reads_groups_meanings_and_continuations():
    assert documented_settings(SOURCE) == [
        ("Paths", [("ROOT", "where the data is"), ("NAMES", "which folders; comma-separated on the command line")]),
        ("Numbers", [("SIZE", "pixels")])]


def test_every_setting_of_the_script_is_documented_in_its_constants_block():
    groups = documented_settings(Path(script.__file__).read_text(encoding="utf-8"))
    assert [group for group, _ in groups] == ["Data", "Backbone", "LoRA heads and their training", "Scoring",
                                              "Outputs and modes"]
    documented = {name: meaning for _, entries in groups for name, meaning in entries}
    assert list(documented) == [f.name for f in dataclasses.fields(Config)]
    assert all(documented.values())
    assert documented["FEATURE_LAYERS"].endswith("far better than the last (docs/Feature_Layers.md)")


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_shows_every_setting_with_its_default_and_exits_0(flag, capsys):
    assert script.main([flag, "--NOPE=1"]) == 0
    text = capsys.readouterr().out
    assert "  --IMAGE_SIZE=448  (int)" in text and "  --CATEGORIES=can,fabric," in text
    assert "shorter image side in pixels" in text and "\nScoring:\n" in text
    for field in dataclasses.fields(Config):
        assert f"  --{field.name}=" in text


def test_help_shows_the_defaults_it_is_given():
    defaults = script.default_config().replace(IMAGE_SIZE=224, PREDICT="")
    text = settings_help(Path(script.__file__).read_text(encoding="utf-8"), defaults, "prog", "extra usage")
    assert text.startswith("usage: prog ") and "extra usage" in text
    assert "  --IMAGE_SIZE=224  (int)" in text and '  --PREDICT=""  (str)' in text

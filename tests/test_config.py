"""Strict --NAME=value overrides and the validation of constants."""

import pytest

import anomaly_vfm_v11_lora as script
from anomalyvfm.config import Config, ConfigError, apply_overrides


def test_defaults_come_from_the_script_constants():
    config = script.default_config()
    assert config.BACKBONE == "facebook/dinov2-base"
    assert config.LORA_RANK == 16 and config.LORA_ALPHA == 32.0 and config.EPOCHS == 10
    assert config.SYNTHETIC_SAMPLES == 90 and config.SCORER == "mahalanobis" and config.DEVICE == "auto"
    assert config.CATEGORIES == ["can", "fabric", "fruit_jelly", "rice", "sheet_metal", "vial", "wallplugs", "walnuts"]


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
def test_bad_overrides_are_errors_that_list_valid_names(argument, fragment):
    with pytest.raises(ConfigError) as error:
        apply_overrides(script.default_config(), [argument])
    assert fragment in str(error.value)
    if "Unknown" in fragment or "expected" in fragment:
        assert "Valid settings:" in str(error.value) and "IMAGE_SIZE (int)" in str(error.value)


@pytest.mark.parametrize("change, fragment", [
    ({"IMAGE_SIZE": 225}, "multiple of 14"),
    ({"SCORER": "svm"}, "SCORER must be one of"),
    ({"DEVICE": "tpu"}, "DEVICE must be one of"),
    ({"SYNTHETIC_SAMPLES": 91}, "multiple of 3"),
    ({"FEATURE_LAYERS": [0]}, "counted from 1"),
    ({"CATEGORIES": []}, "at least one category"),
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
    assert "Unknown setting 'NOPE'" in capsys.readouterr().err


@pytest.mark.parametrize("argument, expected", [("--NUM_WORKERS=auto", "auto"), ("--NUM_WORKERS=3", 3)])
def test_num_workers_is_auto_or_a_count(argument, expected):
    assert apply_overrides(script.default_config(), [argument]).NUM_WORKERS == expected


@pytest.mark.parametrize("value", ["lots", -1, 1.5])
def test_num_workers_rejects_anything_else(value):
    with pytest.raises(ConfigError, match="NUM_WORKERS must be 'auto' or an integer >= 0"):
        script.default_config().replace(NUM_WORKERS=value)

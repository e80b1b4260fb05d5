import json
import subprocess
import sys

import pytest

from world_modality.config import (
    MEMORY_MODES,
    PRESETS,
    TRAIN_MEMORY_MODES,
    ConfigError,
    ExperimentConfig,
    build_config,
    flatten,
    matching_preset,
    parse_train_args,
)

NOTES_FLAGS = [
    "--instruction_key",
    "--episode_id_key",
    "--lambda_world",
    "--delta_prediction",
    "--latent_suffix",
    "--freeze_backbone",
    "--use_lora",
    "--batch_size",
    "--max_epochs",
    "--disable_future_injection",
    "--lambda_text",
    "--coc_jsonl",
]
COMMON = (
    "--instruction_key task --episode_id_key episode_index --freeze_backbone --use_lora --batch_size 8 --max_epochs 5"
).split()
E2_LINE = COMMON + "--lambda_world 0.2 --delta_prediction --latent_suffix m4".split()
E0_LINE = COMMON + ["--disable_future_injection"]


def test_help_lists_every_research_flag():
    out = subprocess.run(
        [sys.executable, "-m", "world_modality.train", "--help"], capture_output=True, text=True, check=True
    ).stdout
    missing = [f for f in NOTES_FLAGS if f not in out]
    assert not missing, f"flags missing from --help: {missing}"


@pytest.mark.parametrize("line,preset", [(E2_LINE, "E2"), (E0_LINE, "E0")])
def test_research_command_lines_parse_to_presets(line, preset):
    cfg = parse_train_args(line)
    via_preset = parse_train_args(["--preset", preset] + COMMON)
    assert flatten(cfg) == flatten(via_preset)
    assert matching_preset(cfg) == preset
    assert cfg.policy.freeze_backbone and cfg.policy.use_lora and cfg.train.max_epochs == 5


def test_flags_override_presets():
    cfg = parse_train_args(["--preset", "E2", "--lambda_world", "0.5", "--no-delta_prediction"])
    assert cfg.world.lambda_world == 0.5 and cfg.world.delta_prediction is False
    assert matching_preset(cfg) is None


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_builds_and_is_recognised(name):
    overrides = {"coc_jsonl": "ann.jsonl"} if name == "E4" else {}
    if name == "E2-Pretrained":  # its encoder is a folder of weights: the preset cannot do without one
        overrides = {"world_encoder_path": "/models/pretrained-vjepa2"}
    assert matching_preset(build_config(overrides, preset=name)) == name


def test_config_json_round_trip(tmp_path):
    cfg = build_config({"dataset": "/d", "image_keys": ("observation.images.image",)}, preset="E2-Flow")
    cfg.to_json(tmp_path / "c.json")
    back = ExperimentConfig.from_json(tmp_path / "c.json")
    assert flatten(back) == flatten(cfg) and back.preset == "E2-Flow"
    assert json.loads((tmp_path / "c.json").read_text())["world"]["lambda_world"] == 0.2


@pytest.mark.parametrize(
    "overrides,needle",
    [
        ({"latent_suffix": "4"}, "latent_suffix"),
        ({"lambda_world": -1.0}, "lambda_world"),
        ({"memory_mode": "future"}, "memory_mode"),
        ({"batch_size": 0}, "batch_size"),
        ({"lambda_text": 0.1}, "coc_jsonl"),
        ({"backbone": "qwen2.5-vl"}, "backbone_path"),
        ({"dist_timeout_minutes": 0}, r"`dist_timeout_minutes` must be >= 1, got 0"),
    ],
)
def test_bad_values_name_the_field(overrides, needle):
    with pytest.raises(ConfigError, match=needle):
        build_config(overrides)


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ConfigError, match="E2-Flow"):
        build_config({}, preset="E3")


def test_unknown_field_in_saved_config(tmp_path):
    (tmp_path / "c.json").write_text(json.dumps({"world": {"lambda_wrld": 0.2}}))
    with pytest.raises(ConfigError, match="lambda_wrld"):
        ExperimentConfig.from_json(tmp_path / "c.json")


@pytest.mark.parametrize("mode", ["oracle", "shuffle", "zero", "random", "future"])
def test_training_memory_mode_is_predicted_or_present(mode):
    """Training with `oracle` (or `shuffle`) fed the action path the true future while it learned, and closed-loop
    evaluation then ran the policy on its predictions: the ablations are evaluation flags, not training settings.
    `present` (z_t, no future) is the one other training mode."""
    needle = (
        rf"`memory_mode` must be 'predicted' or 'present' in training .*got '{mode}'; oracle, zero, random, "
        rf"shuffle are evaluation ablations.*eval-offline"
    )
    with pytest.raises(ConfigError, match=needle):
        build_config({"memory_mode": mode}, preset="E2")
    assert TRAIN_MEMORY_MODES == ("predicted", "present")
    for ok in TRAIN_MEMORY_MODES:
        assert build_config({"memory_mode": ok}, preset="E2").policy.memory_mode == ok


def test_present_memory_needs_the_memory_branch():
    with pytest.raises(ConfigError, match=r"`memory_mode` 'present' needs the memory branch.*E0"):
        build_config({"memory_mode": "present"}, preset="E0")


def test_e2_present_preset_is_e2_with_present_memory_and_no_world_loss():
    e2, present = flatten(build_config({}, preset="E2")), flatten(build_config({}, preset="E2-Present"))
    assert present["memory_mode"] == "present" and present["lambda_world"] == 0.0
    assert {k for k in e2 if e2[k] != present[k]} == {"memory_mode", "lambda_world"}
    assert matching_preset(build_config({}, preset="E2-Present")) == "E2-Present"
    # Parsed from flags too; an E2 trained on `present` with a world loss is neither E2 nor E2-Present.
    line = COMMON + "--lambda_world 0 --delta_prediction --latent_suffix m4 --memory_mode present".split()
    assert matching_preset(parse_train_args(line)) == "E2-Present"
    assert matching_preset(build_config({"memory_mode": "present"}, preset="E2")) is None
    assert MEMORY_MODES.index("present") == MEMORY_MODES.index("predicted") + 1


@pytest.mark.parametrize("bad", [0, -4, 2, 3, 8, "4"])
def test_world_tokens_must_be_a_perfect_square(bad):
    with pytest.raises(ConfigError, match=rf"`world_tokens` must be a perfect square >= 1.*got {bad!r}"):
        build_config({"world_tokens": bad}, preset="E2")


def test_world_tokens_default_and_env_state():
    assert build_config({}, preset="E2").world.world_tokens == 1
    assert build_config({"world_tokens": 9}, preset="E2").world.world_tokens == 9
    assert parse_train_args(["--preset", "E2", "--world_tokens", "4"]).world.world_tokens == 4
    with pytest.raises(ConfigError, match=r"'env_state' is a state vector.*`world_tokens` must be 1.*got 4"):
        build_config({"world_tokens": 4}, preset="E2-State")


def test_saved_config_trained_with_another_memory_mode_names_the_file(tmp_path):
    saved = build_config({}, preset="E2").to_dict()
    saved["policy"]["memory_mode"] = "shuffle"
    (tmp_path / "config.json").write_text(json.dumps(saved))
    needle = r"config\.json: `memory_mode` must be 'predicted' or 'present' in training.*'shuffle'"
    with pytest.raises(ConfigError, match=needle):
        ExperimentConfig.from_json(tmp_path / "config.json")


@pytest.mark.parametrize(
    "overrides,needle",
    [
        ({"lr": float("inf")}, r"`lr` must be a finite number > 0, got inf."),
        ({"lr": float("nan")}, r"`lr` must be a finite number > 0, got nan."),
        ({"lr": 0.0}, r"`lr` must be a finite number > 0, got 0.0."),
        ({"lambda_world": float("inf")}, r"`lambda_world` must be a finite number, got inf."),
        ({"lambda_text": float("nan")}, r"`lambda_text` must be a finite number, got nan."),
        ({"weight_decay": -0.1}, r"`weight_decay` must be >= 0, got -0.1."),
        ({"grad_clip": float("nan")}, r"`grad_clip` must be a finite number, got nan."),
        ({"grad_clip": -1.0}, r"`grad_clip` must be >= 0 \(0 = no clipping\), got -1.0."),
        ({"save_every_steps": -5}, r"`save_every_steps` must be >= 0"),
        ({"prophet_hidden": 0}, r"`prophet_hidden` must be >= 1, got 0."),
        ({"world_image_size": 8}, r"`world_image_size` must be in \[16, 1024\], got 8."),
        ({"max_text_tokens": 0}, r"`max_text_tokens` must be >= 1, got 0."),
    ],
    ids=[
        "lr-inf",
        "lr-nan",
        "lr-zero",
        "lambda-world-inf",
        "lambda-text-nan",
        "weight-decay",
        "grad-clip-nan",
        "grad-clip-negative",
        "save-every",
        "prophet-hidden",
        "world-image-size",
        "text-tokens",
    ],
)
def test_nonfinite_and_out_of_range_numbers_are_refused(overrides, needle):
    """`--lr inf` trained with action_loss=nan to a "final checkpoint"; a NaN passes every `x >= 0` check, and
    `--grad_clip nan` switched clipping off without a word."""
    with pytest.raises(ConfigError, match=needle):
        build_config(overrides)


@pytest.mark.parametrize(
    "text,needle",
    [
        ('{"world": {"lambda_world": 0.2', r"c.json is not valid JSON \(.*\); expected the config.json written by"),
        ("[1, 2]", r"c.json: a config must be a JSON object with sections"),
        ('{"world": 3}', r"c.json: config section `world` must be an object of fields, got int."),
        ('{"train": {"batch_size": "8"}}', r"c.json: config section `train` has a value of the wrong type"),
    ],
    ids=["not-json", "not-object", "section-not-object", "wrong-type"],
)
def test_a_saved_config_that_is_not_a_config_names_the_file(tmp_path, text, needle):
    (tmp_path / "c.json").write_text(text)
    with pytest.raises(ConfigError, match=needle):
        ExperimentConfig.from_json(tmp_path / "c.json")


def test_a_config_never_changes_once_made_and_replace_checks_again():
    import dataclasses

    cfg = build_config({"dataset": "/d"}, preset="E2")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.data.dataset = "/other"  # type: ignore[misc]
    other = cfg.replace(dataset="/other", lr=0.1)
    assert (other.data.dataset, other.train.lr, cfg.data.dataset, cfg.train.lr) == ("/other", 0.1, "/d", 3e-4)
    assert flatten(other.replace(dataset="/d", lr=3e-4)) == flatten(cfg) and other.preset == "E2"
    with pytest.raises(ConfigError, match=r"`lambda_world` must be >= 0, got -1"):
        cfg.replace(lambda_world=-1.0)
    with pytest.raises(ConfigError, match=r"unknown config fields \['lambda_wrld'\]"):
        cfg.replace(lambda_wrld=0.1)


@pytest.mark.parametrize(
    "use,ok,bad,needle",
    [
        ("training", ("predicted", "present"), "oracle", r"`memory_mode` must be 'predicted' or 'present' in training"),
        (
            "closed-loop",
            ("predicted", "present", "zero", "random", "shuffle"),
            "oracle",
            r"closed-loop memory mode must be one of .*got 'oracle' \(oracle is offline-only",
        ),
        ("offline", MEMORY_MODES, "future", r"offline memory mode must be one of .*got 'future'\."),
    ],
)
def test_one_memory_mode_check_for_every_use(use, ok, bad, needle):
    from world_modality.config import check_memory_mode

    assert [check_memory_mode(m, use) for m in ok] == list(ok)
    with pytest.raises(ConfigError, match=needle):
        check_memory_mode(bad, use)

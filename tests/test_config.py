"""TrainConfig and its flat settings (nanoGPT's names), which presets, checkpoints and the command line use."""
from dataclasses import fields

import pytest

from tinygpt.config import MODEL_SETTINGS, PRESETS, ConfigError, TrainConfig, default_model
from tinygpt.nn import GPTConfig


def test_flat_settings_name_every_model_and_run_field_once():
    run_fields = {item.name for item in fields(TrainConfig)} - {"model"}
    assert set(MODEL_SETTINGS.values()) == {item.name for item in fields(GPTConfig)}
    assert not run_fields & set(MODEL_SETTINGS)
    assert set(TrainConfig().settings()) == run_fields | set(MODEL_SETTINGS)
    assert {"n_layer", "n_head", "n_embd", "block_size", "vocab_size", "dropout", "bias"} <= set(MODEL_SETTINGS)


def test_settings_round_trip_through_a_train_config():
    settings = TrainConfig().settings() | dict(n_layer=2, n_head=8, n_embd=64, block_size=32, bias=True, beta1=0.8)
    config = TrainConfig.from_settings(settings)
    assert config.model == GPTConfig(max_seq_length=32, vocab_size=256, num_layers=2, num_heads=8, embedding_dim=64,
                                     dropout=0.0, bias=True)
    assert config.beta1 == 0.8 and config.settings() == settings


def test_settings_not_given_take_the_defaults_and_unknown_ones_are_refused():
    assert TrainConfig.from_settings({}) == TrainConfig()
    assert TrainConfig().model == default_model()
    assert TrainConfig.from_settings({"n_layer": 1}).model.embedding_dim == default_model().embedding_dim
    with pytest.raises(ConfigError, match=r"unknown training settings \['num_layers', 'shape'\]"):
        TrainConfig.from_settings({"num_layers": 2, "shape": 1})


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_is_a_valid_config(name):
    TrainConfig.from_settings(PRESETS[name]).validate()

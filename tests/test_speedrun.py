"""The speedrun's training settings: Muon + AdamW groups, the warmup-stable-decay schedule, the preset, resume."""
import numpy as np
import pytest

from tinygpt.config import PRESETS, ConfigError, TrainConfig
from tinygpt.optimizers import AdamW, Muon, OptimizerGroups, wsd_schedule
from tinygpt.train import build_model, build_optimizer, resolve_config, train

SPEEDRUN = "shakespeare-speedrun-cpu"


def small(**settings) -> TrainConfig:
    base = dict(n_layer=2, n_head=2, n_embd=16, block_size=16, batch_size=4, max_iters=6, eval_interval=3, eval_iters=2,
                sample_tokens=0, optimizer="muon", schedule="wsd", rotary=True, qk_norm=True, norm="rmsnorm",
                mlp_activation="relu2", tied_head=False, zero_init_projections=True, logit_soft_cap=30.0)
    return TrainConfig.from_settings(base | settings)


def test_muon_takes_the_hidden_matrices_and_adamw_the_rest():
    config = small()
    model = build_model(config)
    optimizer = build_optimizer(model, config)
    assert isinstance(optimizer, OptimizerGroups)
    muon, adamw = optimizer.optimizers
    assert isinstance(muon, Muon) and isinstance(adamw, AdamW)
    hidden = {name for name, _ in muon.module.named_parameters()}
    rest = {name for name, _ in adamw.module.named_parameters()}
    assert hidden == {f"blocks.{i}.{layer}.weights" for i in range(2)
                      for layer in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")}
    assert rest == {name for name, _ in model.named_parameters()} - hidden
    assert {"token_embedding.embeddings", "lm_head.weights", "ln_f.weights"} <= rest


def test_muon_ns_steps_sets_the_newton_schulz_iterations():
    config = small(muon_ns_steps=3)
    muon, _ = build_optimizer(build_model(config), config).optimizers
    assert muon.ns_steps == 3


def test_the_wsd_schedule_drives_both_groups_in_proportion():
    config = small(learning_rate=4e-3, min_lr=4e-4, muon_learning_rate=0.04, warmup_iters=2, max_iters=20, decay_fraction=0.5)
    muon, adamw = build_optimizer(build_model(config), config).optimizers
    adamw_reference = wsd_schedule(4e-3, 4e-4, 2, 20, 0.5)
    muon_reference = wsd_schedule(0.04, 0.004, 2, 20, 0.5)
    for step in range(25):
        assert adamw.learning_rate(step) == pytest.approx(adamw_reference(step))
        assert muon.learning_rate(step) == pytest.approx(muon_reference(step))


@pytest.mark.parametrize("settings, message", [(dict(optimizer="lion"), "optimizer"), (dict(schedule="step"), "schedule"),
                                               (dict(decay_fraction=0.0), "decay_fraction"),
                                               (dict(muon_momentum=1.0), "muon_momentum"), (dict(norm="batch"), "norm"),
                                               (dict(muon_ns_steps=0), "muon_ns_steps"),
                                               (dict(mlp_activation="swish"), "mlp_activation"),
                                               (dict(logit_soft_cap=-1.0), "logit_soft_cap")])
def test_bad_speedrun_settings_are_refused_in_one_line(settings, message):
    with pytest.raises(ConfigError, match=message):
        small(**settings).validate()


def test_the_speedrun_preset_is_byte_level_on_the_default_data_and_split():
    preset = resolve_config({}, SPEEDRUN)
    default = resolve_config({}, "shakespeare-char-cpu")
    assert preset.model.vocab_size == 256 and preset.data is None and preset.val_fraction == default.val_fraction
    assert preset.optimizer == "muon" and preset.schedule == "wsd"
    assert preset.max_iters < default.max_iters
    preset.validate()


def test_a_muon_run_resumed_from_its_checkpoint_ends_where_the_uninterrupted_one_does(tmp_path):
    whole = train(small(out_dir=str(tmp_path / "whole")), verbose=False)
    train(small(out_dir=str(tmp_path / "parts"), max_iters=3), verbose=False)
    resumed = train(small(out_dir=str(tmp_path / "parts"), resume=True), verbose=False)
    for (name, expected), (_, actual) in zip(whole.model.named_parameters(), resumed.model.named_parameters(), strict=True):
        np.testing.assert_array_equal(actual.numpy(), expected.numpy(), err_msg=name)

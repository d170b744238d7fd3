"""What `tinygpt <command> --help` shows a newcomer: grouped flags, the choices and defaults, one spelling each."""
import re

import pytest

from tinygpt.cli import main


def help_text(capsys, *command: str) -> str:
    with pytest.raises(SystemExit) as stopped:
        main([*command, "--help"])
    assert stopped.value.code == 0
    return capsys.readouterr().out


def usage_line(text: str) -> str:
    return " ".join(text.split("\n\n")[0].split())


def sections(text: str) -> list[str]:
    """The headings of the help's argument groups ("options:", "model:", ...)."""
    return re.findall(r"^(\S[^\n]*):$", text, flags=re.MULTILINE)


def test_train_help_groups_its_flags(capsys):
    text = help_text(capsys, "train")
    assert {"data and output", "model", "optimization", "evaluation and logging", "run"} <= set(sections(text))
    model = text.split("\nmodel:\n")[1].split("\n\n")[0]
    assert "--n-layer" in model and "--learning-rate" not in model


def test_train_help_shows_choices_not_metavars(capsys):
    text = help_text(capsys, "train")
    for choices in ("--optimizer {adamw,muon}", "--schedule {cosine,wsd}", "--norm {layernorm,rmsnorm}",
                    "--device {cpu,cuda}", "--preset {shakespeare-char-cpu,"):
        assert choices in usage_line(text), choices
    assert "OPTIMIZER" not in text and "SCHEDULE" not in text and "INIT_FROM" not in text


def test_train_usage_has_one_spelling_per_flag(capsys):
    usage = usage_line(help_text(capsys, "train"))
    assert "--n_layer" not in usage and "--qk_norm" not in usage and "--no-qk_norm" not in usage
    assert "[--[no-]qk-norm]" in usage and "[--[no-]bias]" in usage
    assert usage.count("qk") == 1


def test_every_flag_of_every_command_says_what_it_does(capsys):
    for command in (["train"], ["sample"], ["eval"], ["export"], ["profile"], ["attention"],
                    ["tokenizer", "train"], ["tokenizer", "encode"], ["tokenizer", "decode"]):
        text = help_text(capsys, *command)
        lines = text.split("options:\n")[1].splitlines() + [""]
        for line, following in zip(lines, lines[1:]):
            entry = re.match(r"^  (-\S.*?)(?:  +(\S.*))?$", line)
            if entry:  # a flag's line: its help follows on the same line or the next one
                assert entry.group(2) or following.startswith(" " * 10), (command, line)


def test_train_help_shows_the_defaults(capsys):
    text = " ".join(help_text(capsys, "train").split())
    assert "(default: adamw)" in text and "(default: 2000)" in text and "(default: out)" in text


def test_train_help_says_the_gpu_preset_has_not_run_on_a_gpu(capsys):
    text = " ".join(help_text(capsys, "train").split())
    assert "shakespeare-char-gpu needs --device cuda, which has not run on a GPU yet" in text

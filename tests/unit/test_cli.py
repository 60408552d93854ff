"""The command line: short help, one-line usage errors, no guessing of abbreviated flags."""

from __future__ import annotations

import pytest

from streams.cli import build_parser, main


def test_a_usage_mistake_is_one_line_naming_it_and_pointing_at_help(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["worker", "--bogus"])

    assert exited.value.code == 2
    [line] = capsys.readouterr().err.splitlines()
    assert "unrecognized arguments: --bogus" in line
    assert "--help" in line


def test_an_abbreviated_flag_is_not_taken_for_a_setting(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["worker", "--topic", "stripe.events"])

    assert exited.value.code == 2
    assert "--topic" in capsys.readouterr().err


def test_a_command_help_shows_its_own_options_and_not_every_setting(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        main(["worker", "--help"])

    help_text = capsys.readouterr().out
    assert "--web-port" in help_text
    assert "--database-url" not in help_text
    assert "--help-settings" in help_text
    assert len(help_text.splitlines()) < 25


def test_setting_flags_still_apply(monkeypatch: pytest.MonkeyPatch) -> None:
    args = build_parser().parse_args(["settings", "--topic-prefix", "acme"])

    assert args.setting_topic_prefix == "acme"


def test_help_settings_lists_every_setting_flag_with_its_variable(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["worker", "--help-settings"])

    listing = capsys.readouterr().out
    assert exited.value.code == 0
    assert "--database-url DATABASE_URL" in listing
    assert "--topic-prefix STRIPE_STREAMS_TOPIC_PREFIX" in listing
    assert "--web-port" not in listing

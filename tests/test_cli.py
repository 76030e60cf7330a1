"""The command line: `--help` on every command, and the settings `tourniquet run` takes."""

from __future__ import annotations

from collections.abc import Iterator

import click
import pytest
from click.testing import CliRunner

from tourniquet.cli import main


def commands(group: click.Group, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], click.Command]]:
    for name, command in sorted(group.commands.items()):
        yield (*path, name), command
        if isinstance(command, click.Group):
            yield from commands(command, (*path, name))


ALL = [((), main), *commands(main)]


@pytest.mark.parametrize(("path", "command"), ALL, ids=[" ".join(p) or "tourniquet" for p, _ in ALL])
def test_every_command_has_help(path: tuple[str, ...], command: click.Command) -> None:
    for flag in ("--help", "-h"):
        result = CliRunner().invoke(main, [*path, flag])
        assert result.exit_code == 0, result.output
        assert result.output.startswith("Usage: ")
        summary = (command.help or "").strip().splitlines()[0]
        assert summary and summary in " ".join(result.output.split()), f"{path}: no description"
        for param in command.params:
            if isinstance(param, click.Option) and not param.hidden:
                assert param.opts[-1] in result.output, f"{path}: {param.opts} missing from --help"


def test_the_on_call_commands_are_all_there() -> None:
    assert {"run", "sandbox", "crds", "contain", "release", "rollback", "status"} <= set(main.commands)


def run_params(args: list[str]) -> dict:
    parent = click.Context(main, info_name="tourniquet", **main.context_settings)
    return dict(main.commands["run"].make_context("run", args, parent=parent).params)


def test_run_takes_the_log_format_from_the_flag_or_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TOURNIQUET_LOG_FORMAT", raising=False)
    assert run_params([])["log_format"] == "text"
    assert run_params(["--log-format", "json"])["log_format"] == "json"
    monkeypatch.setenv("TOURNIQUET_LOG_FORMAT", "json")
    assert run_params([])["log_format"] == "json"
    assert run_params(["--log-format", "text"])["log_format"] == "text"  # the flag wins
    with pytest.raises(click.BadParameter):
        run_params(["--log-format", "yaml"])

"""The command line: `--help` on every command, and the settings `tourniquet run` takes."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from collections.abc import Iterator
from pathlib import Path

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


def test_the_sandbox_without_the_emulator_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # kubemu (testing/kubemu) is not in the operator's wheel: `pip install tourniquet-operator` has no emulator.
    for name in [m for m in sys.modules if m == "kubemu" or m.startswith("kubemu.")] or ["kubemu"]:
        monkeypatch.setitem(sys.modules, name, None)
    result = CliRunner().invoke(main, ["sandbox", "--dir", str(tmp_path / "sandbox"), "--no-examples"])
    assert result.exit_code == 1, result.output
    assert "needs kubemu" in result.output
    assert "pip install -e testing/kubemu" in result.output
    assert not (tmp_path / "sandbox").exists()  # nothing was started


def test_the_operators_wheel_leaves_the_emulator_out(tmp_path: Path) -> None:
    # What the Dockerfile copies (a build in place would leave build/ in the tree).
    root, source = Path(__file__).resolve().parent.parent, tmp_path / "source"
    shutil.copytree(root / "operator", source / "operator", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(root / name, source / name)
    pip = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    built = subprocess.run(
        [*pip, "-w", str(tmp_path), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("tourniquet_operator-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "tourniquet/cli.py" in names and "tourniquet/sandbox/run.py" in names
    assert not [n for n in names if n.startswith("kubemu/") or "emulator" in n or "crvalidate" in n], names

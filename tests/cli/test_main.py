"""The CLI shell: instant help, version, every registered command answers --help."""

from __future__ import annotations

import subprocess
import sys

import pytest
from click.testing import CliRunner

from lorastudio import __version__
from lorastudio.cli.main import _available, cli

HEAVY = ("torch", "diffusers", "transformers", "peft", "accelerate")


def _imported_after(args: list[str]) -> set[str]:
    code = (
        "import sys\n"
        "from lorastudio.cli.main import cli\n"
        "try:\n"
        f"    cli.main({args!r}, standalone_mode=False)\n"
        "except SystemExit:\n"
        "    pass\n"
        f"print('HEAVY=' + ','.join(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    marker = [line for line in out.stdout.splitlines() if line.startswith("HEAVY=")]
    assert marker, out.stdout + out.stderr
    return {m for m in marker[-1].removeprefix("HEAVY=").split(",") if m}


def test_version():
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0 and __version__ in result.output


def test_help_lists_commands_without_heavy_imports():
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0 and "Commands" in result.output
    assert _imported_after(["--help"]) == set()


@pytest.mark.parametrize("name", sorted(_available()))
def test_each_command_help_is_light(name):
    result = CliRunner().invoke(cli, [name, "--help"])
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output
    assert _imported_after([name, "--help"]) == set(), f"{name} --help imports heavy modules"


def test_unknown_command_is_usage_error():
    result = CliRunner().invoke(cli, ["no-such-command"])
    assert result.exit_code == 2

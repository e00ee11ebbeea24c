"""Seed failure #20: every module imports, and every `refdet` subcommand answers --help."""

from __future__ import annotations

import importlib
import pkgutil

import pytest

import refdet_core
from refdet_core.cli import build_parser, main

MODULES = sorted(m.name for m in pkgutil.walk_packages(refdet_core.__path__, "refdet_core."))
COMMANDS = [
    ["data", "demo"],
    ["data", "check"],
    ["cache", "build"],
    ["params"],
    ["train"],
    ["predict"],
    ["score"],
    ["profile"],
    ["bench"],
    ["run"],
    ["weights", "check"],
    ["weights", "convert"],
    ["export"],
    ["validate"],
]


@pytest.mark.parametrize("name", MODULES)
def test_every_module_imports(name):
    importlib.import_module(name)


@pytest.mark.parametrize("command", COMMANDS, ids=" ".join)
def test_every_command_has_help(command, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: refdet" in capsys.readouterr().out


def test_parser_knows_every_command():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(sub.choices) == {c[0] for c in COMMANDS}


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["data", "check", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("refdet: error:") and "nowhere" in err[0]
    assert main(["params", "-c", "fusion=transformer"]) == 2
    assert "'fusion' must be one of psalm, cheaf" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["predict"], ["export"], ["bench"]], ids=" ".join)
def test_every_flag_has_help_text(command, capsys):
    """Each option of the user-facing commands says what it does (argparse prints nothing for a bare flag)."""
    from refdet_core.cli import build_parser

    parser = build_parser()
    sub = parser._subparsers._group_actions[0].choices[command[0]]
    bare = [a.option_strings for a in sub._actions if a.option_strings and not a.help]
    assert not bare, f"refdet {command[0]}: options without help: {bare}"

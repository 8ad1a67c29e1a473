"""Every command and argument of `pdlab` explains itself: help text on each, an example under each command."""

from __future__ import annotations

import argparse
from pathlib import Path

from pdlab.cli import _parser, main


def _commands() -> dict[str, argparse.ArgumentParser]:
    sub = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_every_argument_has_help_and_every_command_an_example():
    missing = [f"{name} {'/'.join(a.option_strings) or a.dest}" for name, p in _commands().items()
               for a in p._actions if not isinstance(a, argparse._HelpAction) and not (a.help or "").strip()]
    assert missing == []
    assert [n for n, p in _commands().items() if "example:" not in (p.epilog or "")] == []


def test_help_shows_the_example(capsys):
    try:
        main(["sweep", "--help"])
    except SystemExit:
        pass
    assert "pdlab sweep params/demo-sweep.yaml --dry-run" in capsys.readouterr().out


def test_cleanup_hint_names_the_flag_not_the_params_field(tmp_path: Path, capsys):
    bad = tmp_path / "kubeconfig"
    bad.write_text("not: [a kubeconfig")
    assert main(["cleanup", "--backend", "k8s", "--kubeconfig", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "--kubeconfig" in err and "backend.k8s" not in err

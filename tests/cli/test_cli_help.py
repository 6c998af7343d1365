"""``--help`` of every command reads as plain text: no Sphinx markup, no doubled ``%%``
(issue 11)."""
from __future__ import annotations

import importlib
import re

import pytest

COMMANDS = [("run", []), ("train", []), ("train", ["crf"]), ("eval", []),
            ("eval", ["synthetic"]), ("eval", ["dataset"]), ("bench", []), ("export", []),
            ("build", []), ("seal", []), ("check_env", [])]
MARKUP = re.compile(r"``|:(func|class|mod|meth|data|attr|exc):`|::\s*$|%%", re.M)


@pytest.mark.parametrize("module, sub", COMMANDS, ids=[" ".join([m, *s]) for m, s in COMMANDS])
def test_help_is_plain_text(module, sub, capsys):
    main = importlib.import_module(f"convcrf_deploy.cli.{module}").main
    with pytest.raises(SystemExit) as info:
        main([*sub, "--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert text.strip() and not MARKUP.search(text), MARKUP.search(text).group(0)


def test_percent_and_examples_render():
    from convcrf_deploy.cli.harness import plain_text
    assert plain_text("``x`` and :func:`a.b` 20%%\nExamples::\n") == "x and a.b 20%\nExamples:\n"

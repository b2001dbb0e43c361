"""The documentation is true to the code: every CLI flag is in the CLI page, every README link resolves."""

import argparse
import re
from pathlib import Path

from charlm_jax.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent


def cli_flags() -> dict[str, set[str]]:
    parser = build_parser()
    flags = {"": {option for action in parser._actions for option in action.option_strings}}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                flags[name] = {option for a in sub._actions for option in a.option_strings}
    return {name: {f for f in found if f.startswith("--") and f != "--help"} for name, found in flags.items()}


def test_every_cli_flag_is_in_the_cli_page():
    page = (ROOT / "docs" / "cli.md").read_text()
    missing = {name: sorted(f for f in flags if f not in page) for name, flags in cli_flags().items()}
    assert not any(missing.values()), missing
    for command in cli_flags():
        assert not command or f"charlm-jax {command}" in page


def test_readme_and_docs_links_resolve():
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text()):
            if not target.startswith(("http://", "https://")):
                assert (page.parent / target).exists(), f"{page.name} links to missing {target}"

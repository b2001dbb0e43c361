"""Render every measured figure in README.md and docs/ from the result files in benchmarks/results/.

    python scripts/render_figures.py            # rewrite the documents' figures from the files
    python scripts/render_figures.py --check    # exit 1, naming each figure, where a document differs

A figure in a document is written inside a marker that names where it comes from:

    <!--f 2026-11-30-cpu-generation single.api_1.us_per_char .1f-->15.4<!--/f--> us per character

``STEM`` is a file ``benchmarks/results/STEM.json``; ``PATH`` walks its keys (``.``-separated; list
indexes are numbers), optionally scaled to another unit (``PATH*1e3``): a look-up, never arithmetic between
figures (a ratio or a difference a document quotes is written into a result file, by its benchmark or by
``benchmarks/doc_tables.py`` into ``derived-doc-figures``); ``FMT`` is a Python format spec (``.1f``, ``,.0f``, ``.3f``; none
for a string such as a date or a machine's name). A text a result file keeps (a transcript) is shown
as a code block between ``<!--block STEM PATH-->`` and ``<!--/block-->``, and a whole table a result file
keeps (``{"header": [...], "rows": [[...], ...]}``, its cells already formatted by the script that measured
or derived them) between ``<!--table STEM PATH-->`` and ``<!--/table-->``.
The text between the markers is what this script writes there, so a document can drift from its file
only until the next ``--check``, which the tests run (tests/integration/test_docs.py). Numbers that are not
measurements (defaults, flags, sizes of a configuration) are written plainly, or, where they look like
one (``64 MiB``), inside ``<!--n-->`` and ``<!--/n-->``. ``--check`` also fails on a figure that looks
measured (a time per step, a memory size, a rate, a ratio, bits per character) and names no file.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from functools import cache
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FIGURE = re.compile(r"<!--f (?P<stem>\S+) (?P<path>[^\s>]+) ?(?P<spec>[^\s>-]*)-->(?P<value>.*?)<!--/f-->")
# A text kept in a result file (a transcript), shown as a code block: <!--block STEM PATH--> ... <!--/block-->.
BLOCK = re.compile(r"<!--block (?P<stem>\S+) (?P<path>\S+)-->\n(?P<value>.*?)<!--/block-->", re.DOTALL)
# A whole table kept in a result file: <!--table STEM PATH--> ... <!--/table-->.
TABLE = re.compile(r"<!--table (?P<stem>\S+) (?P<path>\S+)-->\n(?P<value>.*?)<!--/table-->", re.DOTALL)
# What a measured figure looks like when it is written plainly, outside a marker and outside code: a time
# per step or character, a memory size, a rate, a ratio ("85x"), decimal seconds, or bits per character.
MEASURED = re.compile(
    r"(?<![\w.\-])\d[\d,]*(?:\.\d+)?\s?(?:ms|us|µs|MiB|GiB|KiB|MB/s|bits/char|bits per character|windows/s|"
    r"steps/s|characters/s|GFLOP/s)\b"
    r"|(?<![\w.\-])\d+(?:\.\d+)?x\b"
    r"|(?<![\w.\-])\d+\.\d+\s?s\b"
    r"|(?<![\w.\-])[1-9]\.\d{3}\b"
)
# A number that is a setting, not a measurement (a threshold, a test's disk size): <!--n-->64 MiB<!--/n-->.
SETTING = re.compile(r"<!--n-->.*?<!--/n-->")
CODE = re.compile(r"```.*?```|`[^`\n]*`", re.DOTALL)


@cache
def result_file(stem: str) -> Any:
    path = RESULTS / f"{stem}.json"
    if not path.is_file():
        raise KeyError(f"no result file {path.relative_to(ROOT)}")
    return json.loads(path.read_text())


def leaf(data: Any, path: str, raw: bool = False) -> Any:
    scale = 1.0
    if "*" in path:
        path, factor = path.split("*")
        scale = float(factor)
    value = data
    for key in path.split("."):
        value = value[int(key)] if isinstance(value, list) else value[key]
    if raw or isinstance(value, str):  # a table, a date or a machine's name: as written
        return value
    return float(value) * scale


def figure_value(stem: str, path: str) -> Any:
    return leaf(result_file(stem), path)


def render(text: str, where: str = "") -> tuple[str, list[str]]:
    """The text with every figure rewritten from its file, and one line per figure that changed."""
    changes: list[str] = []

    def replace(match: re.Match) -> str:
        try:
            value = format(figure_value(match["stem"], match["path"]), match["spec"])
        except (KeyError, IndexError, ValueError, TypeError) as error:
            raise SystemExit(f"{where}: {match[0][:120]}: {error}") from None
        if value != match["value"]:
            line = text.count("\n", 0, match.start()) + 1
            changes.append(f"{where}:{line}: {match['stem']} {match['path']}: {match['value']!r} -> {value!r}")
        spec = f" {match['spec']}" if match["spec"] else " "
        return f"<!--f {match['stem']} {match['path']}{spec}-->{value}<!--/f-->"

    def replace_block(match: re.Match) -> str:
        try:
            value = "```text\n" + str(leaf(result_file(match["stem"]), match["path"])).rstrip("\n") + "\n```\n"
        except (KeyError, IndexError) as error:
            raise SystemExit(f"{where}: {match[0][:120]}: {error}") from None
        if value != match["value"]:
            line = text.count("\n", 0, match.start()) + 1
            changes.append(f"{where}:{line}: {match['stem']} {match['path']}: the block differs")
        return f"<!--block {match['stem']} {match['path']}-->\n{value}<!--/block-->"

    def replace_table(match: re.Match) -> str:
        try:
            value = markdown_table(leaf(result_file(match["stem"]), match["path"], raw=True))
        except (KeyError, IndexError, TypeError) as error:
            raise SystemExit(f"{where}: {match[0][:120]}: {error}") from None
        if value != match["value"]:
            line = text.count("\n", 0, match.start()) + 1
            changes.append(f"{where}:{line}: {match['stem']} {match['path']}: the table differs")
        return f"<!--table {match['stem']} {match['path']}-->\n{value}<!--/table-->"

    rendered = TABLE.sub(replace_table, BLOCK.sub(replace_block, FIGURE.sub(replace, text)))
    return rendered, changes


def markdown_table(table: dict[str, Any]) -> str:
    """A result file's table (header and rows of formatted cells) as a Markdown table."""
    lines = ["| " + " | ".join(table["header"]) + " |", "|" + "---|" * len(table["header"])]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in table["rows"]]
    return "\n".join(lines) + "\n"


def unbound_figures(text: str, where: str = "") -> list[str]:
    """Measured-looking figures written plainly (outside markers and code): each is a figure that can drift."""
    bound = TABLE.sub("", BLOCK.sub("", FIGURE.sub("", SETTING.sub("", text))))
    kept = CODE.sub(lambda m: "\n" * m[0].count("\n"), bound)
    found = []
    for number, line in enumerate(kept.splitlines(), 1):
        found += [f"{where}:{number}: {m[0]!r} in: {line.strip()[:100]}" for m in MEASURED.finditer(line)]
    return found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 if a figure differs")
    args = parser.parse_args()
    drifted, unbound = [], []
    for document in DOCUMENTS:
        text = document.read_text()
        rendered, changes = render(text, str(document.relative_to(ROOT)))
        unbound += unbound_figures(text, str(document.relative_to(ROOT)))
        drifted += changes
        if changes and not args.check:
            document.write_text(rendered)
    for change in drifted:
        print(change)
    for figure in unbound:
        print(f"{figure}  (no result file named: put it in a marker, or remove it)")
    if args.check and drifted:
        print(f"{len(drifted)} figure(s) differ from their result files: run python scripts/render_figures.py")
    return 1 if (args.check and drifted) or unbound else 0


if __name__ == "__main__":
    sys.exit(main())

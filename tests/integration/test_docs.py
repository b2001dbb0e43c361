"""The documentation is true to the code: every CLI flag is in the CLI page, every link resolves, every figure
comes from its result file, every command parses, and the code blocks and the example notebook run."""

import argparse
import re
import sys
from pathlib import Path

import pytest

from charlm_jax.cli.app import build_parser

ROOT = Path(__file__).resolve().parent.parent.parent


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


# ------------------------------------------------------------------ figures, commands and code blocks


def render_figures_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("render_figures", ROOT / "scripts" / "render_figures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_figure_in_the_docs_is_rendered_from_its_result_file():
    """The figures in README.md and docs/ are what scripts/render_figures.py writes from benchmarks/results/,
    and no measured-looking figure is written without a marker naming its file."""
    figures = render_figures_module()
    drifted, unbound = [], []
    for document in figures.DOCUMENTS:
        text, where = document.read_text(), str(document.relative_to(ROOT))
        drifted += figures.render(text, where)[1]
        unbound += figures.unbound_figures(text, where)
    assert not drifted, "run python scripts/render_figures.py:\n" + "\n".join(drifted)
    assert not unbound, "figures with no result file:\n" + "\n".join(unbound)


def test_the_derived_figures_are_what_their_result_files_give():
    """benchmarks/doc_tables.py's file (the tables and differences the documents quote) is up to date."""
    import subprocess

    checked = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "doc_tables.py"), "--check"], capture_output=True
    )
    assert checked.returncode == 0, checked.stdout.decode()


def test_render_figures_renders_a_table_and_refuses_arithmetic():
    figures = render_figures_module()
    marker = "<!--table derived-doc-figures tables.race-600-pydoc-->"
    rendered, changes = figures.render(f"{marker}\n| stale |\n<!--/table-->", "doc.md")
    assert rendered.startswith(f"{marker}\n| `book` | `auto` |") and "updates |" in rendered and len(changes) == 1
    assert figures.render(rendered)[1] == []
    with pytest.raises(SystemExit):  # a ratio between two figures is a value a result file holds, not a marker's
        figures.render("<!--f 2026-12-02-cpu training.charlm_jax.median_s/training.torch.median_s .2f-->0.65<!--/f-->")


def test_render_figures_finds_a_drifted_figure_and_a_figure_without_a_file():
    figures = render_figures_module()
    marker = "<!--f 2026-11-30-cpu-recipes texts.pydoc.streams.best_val_bits_per_char .3f-->"
    rendered, changes = figures.render(f"streams: {marker}1.700<!--/f--> bits/char", "doc.md")
    assert rendered == f"streams: {marker}1.648<!--/f--> bits/char" and len(changes) == 1
    assert figures.render(rendered)[1] == []
    assert len(figures.unbound_figures("the step took 31.5 ms, 0.58x PyTorch's")) == 2
    assert figures.unbound_figures("batch 128, `--time-limit 600`, a <!--n-->64 MiB<!--/n--> file") == []


def fenced_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, re.DOTALL)


def documents() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), ROOT / "benchmarks" / "README.md"]


def test_every_command_in_the_docs_parses_with_the_cli():
    """Each `charlm-jax ...` line of a bash block is accepted by the CLI's parser (no flag renamed or gone)."""
    import shlex

    parser = build_parser()
    checked = 0
    for page in documents():
        for block in fenced_blocks(page.read_text(), "bash"):
            for line in block.replace("\\\n", " ").splitlines():
                command = re.sub(r"\s+#.*$", "", line).strip()
                if not command.startswith("charlm-jax "):
                    continue
                try:
                    parser.parse_args(shlex.split(command)[1:])
                except SystemExit:
                    raise AssertionError(f"{page.name}: the CLI refuses {command!r}") from None
                checked += 1
    assert checked >= 10


def run_python_blocks(blocks: list[str], where: str) -> dict:
    namespace: dict = {"__name__": "__docs__"}
    for index, block in enumerate(blocks):
        exec(compile(block, f"{where} block {index + 1}", "exec"), namespace)
    return namespace


@pytest.mark.slow  # ~45 s with the tests' unoptimised compiles; CI runs it
def test_the_python_api_page_runs_as_written(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace = run_python_blocks(fenced_blocks((ROOT / "docs" / "api.md").read_text(), "python"), "docs/api.md")
    assert namespace["lm"].step == 200 and namespace["ids"].shape == (4, 200)
    assert (
        namespace["streamed"]
        == namespace["charlm_jax"].generate(
            namespace["lm"], "the object is ", length=100, temperatures=(0.7, 0.5), seed=0
        )[1]
    )
    assert (
        namespace["served"]
        == namespace["charlm_jax"].generate(namespace["lm"], "the object is ", length=50, temperature=0.5, seed=0)[0]
    )


@pytest.mark.slow  # ~75 s with the tests' unoptimised compiles; CI runs it
def test_the_example_notebook_runs(tmp_path, monkeypatch):
    """Every code cell of examples/quickstart.ipynb, in order, in one namespace (as a kernel runs them)."""
    import json

    import matplotlib

    matplotlib.use("Agg")
    monkeypatch.chdir(tmp_path)
    notebook = json.loads((ROOT / "examples" / "quickstart.ipynb").read_text())
    cells = ["".join(cell["source"]) for cell in notebook["cells"] if cell["cell_type"] == "code"]
    namespace = run_python_blocks(cells, "examples/quickstart.ipynb")
    assert len(namespace["result"].history) >= 5
    assert namespace["probabilities"].shape == (4, namespace["lm"].vocab.size)
    np = namespace["np"]
    np.testing.assert_allclose(namespace["probabilities"].sum(axis=1), 1.0, rtol=1e-5)
    # A lower temperature puts more mass on the likeliest character.
    assert np.all(np.diff(namespace["probabilities"].max(axis=1)) <= 1e-9)


def test_the_python_blocks_and_the_notebook_compile():
    """Their syntax, in the default run (the slow set runs them whole)."""
    import json

    for page in documents():
        for block in fenced_blocks(page.read_text(), "python"):
            compile(block, str(page.relative_to(ROOT)), "exec")
    # Only the pages the slow tests run may hold Python blocks: any other page's block would go unrun.
    with_python = {page.name for page in documents() if fenced_blocks(page.read_text(), "python")}
    assert with_python <= {"api.md", "README.md"}, with_python
    notebook = json.loads((ROOT / "examples" / "quickstart.ipynb").read_text())
    for cell in notebook["cells"]:
        if cell["cell_type"] == "code":
            compile("".join(cell["source"]), "cell", "exec")
            assert cell["outputs"] == [] and cell["execution_count"] is None  # committed without outputs


@pytest.mark.slow
def test_the_readme_quick_start_runs_as_written(tmp_path):
    """The README's quick-start commands, then its Python block, one after the other in an empty folder."""
    import os
    import subprocess

    readme = (ROOT / "README.md").read_text()
    block = readme.split("<!-- quickstart -->", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    env = {k: v for k, v in os.environ.items() if k != "JAX_NUM_CPU_DEVICES"}
    for line in block.splitlines():
        command = re.sub(r"\s+#.*$", "", line).strip()
        if command:
            result = subprocess.run(["bash", "-c", command], cwd=tmp_path, capture_output=True, text=True, env=env)
            assert result.returncode == 0, (command, result.stderr[-2000:])
    python = fenced_blocks(readme, "python")
    assert len(python) == 1
    subprocess.run([sys.executable, "-c", python[0]], cwd=tmp_path, check=True, capture_output=True, env=env)

"""The documentation site: it builds in strict mode, documents every public name, and its CLI page
documents every subcommand and option of the parser (the parser is the source of truth).

mkdocs, mkdocs-material and mkdocstrings are declared test dependencies (the ``docs`` extra):
when they are missing these tests fail, they do not skip.
"""

from __future__ import annotations

import argparse
import html
import importlib.util
import inspect
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bayesmix.cli import _parser

ROOT = Path(__file__).resolve().parents[1]
CLI_PAGE = ROOT / "docs" / "cli.md"
DOCS_PACKAGES = ("mkdocs", "material", "mkdocstrings", "mkdocstrings_handlers.python")


def _text(page: str) -> str:
    """Visible text of an HTML page, whitespace collapsed."""
    body = re.sub(r"<(script|style)\b.*?</\1>", " ", page, flags=re.S)
    return " ".join(html.unescape(re.sub(r"<[^>]+>", " ", body)).split())


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site, built once with ``mkdocs build --strict`` by this interpreter."""
    missing = [m for m in DOCS_PACKAGES if importlib.util.find_spec(m.split(".")[0]) is None]
    assert not missing, f"documentation tools missing: {missing}; pip install -e '.[docs]'"
    out = tmp_path_factory.mktemp("site")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}  # silence Material's banner
    cmd = [sys.executable, "-m", "mkdocs", "build", "--strict",
           "--config-file", str(ROOT / "mkdocs.yml"), "--site-dir", str(out)]  # fmt: skip
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout}\n{proc.stderr}"
    return out


def test_site_builds_strict_with_api_reference(site: Path) -> None:
    api = (site / "api" / "index.html").read_text(encoding="utf-8")
    assert 'id="bayesmix.fit_map"' in api
    assert 'id="bayesmix.priors.TruncatedNormal"' in api
    # The numpydoc Parameters section of fit_map is rendered: the description of one parameter,
    # taken from the docstring itself so that rewording it does not break this test.
    import bayesmix

    doc = inspect.getdoc(bayesmix.fit_map) or ""
    match = re.search(r"^chunk_size : .*\n((?:[ \t]+\S.*\n?)+)", doc, flags=re.M)
    assert match, "fit_map's docstring no longer documents chunk_size"
    description = " ".join(match.group(1).split())
    text = _text(api)
    assert "chunk_size" in text
    assert description in text, f"{description!r} not rendered on the API page"
    # Formulas go to MathJax (typeset in the browser), not left as raw TeX in the text.
    model = (site / "model" / "index.html").read_text(encoding="utf-8")
    assert '<div class="arithmatex">' in model and "mathjax" in model.lower()
    for page in ("index", "cli", "formats", "performance", "gpu", "faq"):
        assert (site / page / "index.html").is_file() or (site / f"{page}.html").is_file(), page


def test_every_public_name_is_documented(site: Path) -> None:
    """Each name of ``bayesmix.__all__`` has an API entry or is at least described in prose."""
    import bayesmix

    api = (site / "api" / "index.html").read_text(encoding="utf-8")
    pages = " ".join(p.read_text(encoding="utf-8") for p in site.rglob("index.html"))
    undocumented = [
        name
        for name in bayesmix.__all__
        if not name.startswith("__")
        and f'id="bayesmix.{name}"' not in api
        and f'id="bayesmix.priors.{name}"' not in api
        # described in prose: named in code, e.g. `bayesmix.read_frames(source)`
        and not re.search(rf"<code>[^<]*\b{re.escape(name)}\b", pages)
    ]
    assert not undocumented, f"add these to docs/api.md (::: bayesmix.NAME): {undocumented}"


# --- the CLI page against the parser --------------------------------------------------------


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    for action in _parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("bayesmix.cli._parser() has no subcommands")


def _section(page: str, command: str) -> str:
    """The part of the CLI page under the level-2 heading that names ``bayesmix COMMAND``."""
    lines = page.splitlines()
    start = None
    fenced = False
    for i, line in enumerate(lines):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        heading = None if fenced else re.match(r"^(#{1,2})\s+(.*)$", line)
        if heading and start is not None:
            return "\n".join(lines[start:i])
        if heading and len(heading.group(1)) == 2:
            words = heading.group(2).replace("`", " ").split()
            if words[:2] == ["bayesmix", command]:
                start = i
    assert start is not None, f"docs/cli.md has no '## `bayesmix {command}`' section"
    return "\n".join(lines[start:])


def _mentions(text: str, word: str) -> bool:
    return re.search(rf"(?<![\w-]){re.escape(word)}(?![\w-])", text) is not None


@pytest.mark.parametrize("command", sorted(_subcommands()))
def test_cli_page_documents_every_option(command: str) -> None:
    section = _section(CLI_PAGE.read_text(encoding="utf-8"), command)
    missing = []
    for action in _subcommands()[command]._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        if not action.option_strings:  # a positional argument: its metavar (or name)
            names = [action.metavar or action.dest]
        else:
            names = [o for o in action.option_strings if o.startswith("--")]
        names += [str(c) for c in action.choices or ()]
        missing += [n for n in names if not _mentions(section, str(n))]
    assert not missing, f"'bayesmix {command}' in docs/cli.md does not mention {missing}"


def test_cli_page_documents_global_options() -> None:
    page = CLI_PAGE.read_text(encoding="utf-8")
    options = [
        o
        for action in _parser()._actions
        if not isinstance(action, argparse._SubParsersAction)
        for o in action.option_strings
        if o.startswith("--")
    ]
    assert "--help" in options
    missing = [o for o in options if not _mentions(page, o)]
    assert not missing, f"docs/cli.md does not mention {missing}"

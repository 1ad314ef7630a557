"""Griffe extension for the documentation site: bayesmix's docstrings, readable in Markdown.

The docstrings are numpydoc with a few reStructuredText constructs (they are also read by
``help()`` and doctests). Before mkdocstrings renders them, this turns

- ``.. math::`` blocks into ``$$ ... $$`` and ``:math:`...``` into ``\\( ... \\)`` (typeset by
  MathJax via ``pymdownx.arithmatex``);
- Sphinx roles (``:func:``, ``:class:``, ``:mod:``, ...) into code spans, linked to the API page
  when the target is documented there;
- a numpydoc entry for several names (``a, b : float``) into one entry per name, so that each
  parameter shows its own annotation and default;
- free-text types with commas (``array, shape (N,)``, ``{'a', 'b'}``) into text that griffe shows
  as written instead of parsing it as a Python tuple or set;
- ``#:`` comments after NamedTuple fields into the fields' docstrings.

Only objects under ``bayesmix`` are touched; the source files are not modified.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path
from typing import Any

import griffe

_PACKAGE = "bayesmix"
_API_PAGE = Path(__file__).resolve().parents[1] / "api.md"

_MATH_ROLE = re.compile(r":math:`([^`]+)`")
_ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|attr|data|obj|exc|const):`(~?)([^`]+)`")
_FIELD_COMMENT = re.compile(r"#:\s*(.+)$")
_MULTI_NAME = re.compile(r"^(\*{0,2}\w+(?:\s*,\s*\*{0,2}\w+)+)(\s*:.*)?$")
_SPLIT_SECTIONS = {"Parameters", "Other Parameters", "Returns", "Yields", "Attributes"}
_NBSP = "\u00a0"  # not valid in Python source: the type stays text, and looks the same


def _rendered() -> set[str]:
    """Identifiers the API page renders: its ``::: name`` lines and their ``members:`` lists.

    A role is linked only to these, so a link can never dangle (which would fail a strict build).
    """
    names: set[str] = set()
    current = None
    in_members = False
    for line in _API_PAGE.read_text(encoding="utf-8").splitlines():
        directive = re.match(r"^:::\s*([\w.]+)", line)
        if directive:
            current = directive.group(1)
            names.add(current)
            in_members = False
        elif current and re.match(r"^\s+members:\s*$", line):
            in_members = True
        elif current and in_members and re.match(r"^\s+-\s*\w+\s*$", line):
            names.add(f"{current}.{line.strip()[1:].strip()}")
        elif line.strip() and not line.startswith(" "):
            current, in_members = None, False
    return names


_RENDERED = _rendered()


def _anchor(target: str) -> str | None:
    """Identifier of ``target`` on the API page, or None if it is not rendered there."""
    name = target.rsplit(".", 1)[-1]
    if "." in target and not target.startswith(_PACKAGE):
        candidates = [f"{_PACKAGE}.{target}"]  # e.g. MapResult.interval
    else:
        # bare names and private module paths (bayesmix._stats.FrameStats) of public objects
        candidates = [target, f"{_PACKAGE}.{name}", f"{_PACKAGE}.priors.{name}"]
    return next((c for c in candidates if c in _RENDERED), None)


def _role(match: re.Match[str]) -> str:
    tilde, target = match.group(1), match.group(2).strip()
    shown = target.rsplit(".", 1)[-1] if tilde else target
    anchor = _anchor(target)
    return f"[`{shown}`][{anchor}]" if anchor else f"`{shown}`"


def _math_blocks(text: str) -> str:
    """``.. math::`` directives (an indented body after a blank line) as ``$$`` blocks."""
    lines = text.split("\n")
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.strip() != ".. math::":
            out.append(line)
            i += 1
            continue
        indent = line[: len(line) - len(line.lstrip())]
        body: list[str] = []
        i += 1
        while i < len(lines) and (
            not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > len(indent)
        ):
            body.append(lines[i])
            i += 1
        while body and not body[-1].strip():
            body.pop()
        while body and not body[0].strip():
            body.pop(0)
        block = textwrap.dedent("\n".join(body)).split("\n")
        out.extend([f"{indent}$$", *(f"{indent}{b}" if b else "" for b in block), f"{indent}$$"])
        if i < len(lines) and lines[i].strip():
            out.append("")
    return "\n".join(out)


def _split_parameters(text: str) -> str:
    """One numpydoc entry per name in the Parameters sections (``a, b : float`` -> two)."""
    lines = text.split("\n")
    out: list[str] = []
    section = None
    i = 0
    while i < len(lines):
        line = lines[i]
        underline = lines[i + 1].strip() if i + 1 < len(lines) else ""
        if line.strip() and underline and set(underline) == {"-"}:
            section = line.strip()
            out.extend([line, lines[i + 1]])
            i += 2
            continue
        match = _MULTI_NAME.match(line) if section in _SPLIT_SECTIONS else None
        if not match:
            out.append(_literal_type(line) if section in _SPLIT_SECTIONS else line)
            i += 1
            continue
        names = [n.strip() for n in match.group(1).split(",")]
        rest = match.group(2) or ""
        body: list[str] = []
        i += 1
        while i < len(lines) and lines[i].startswith((" ", "\t")):
            body.append(lines[i])
            i += 1
        for name in names:
            out.extend([_literal_type(name + rest), *body])
    return "\n".join(out)


def _literal_type(line: str) -> str:
    """An entry line (``name : type``, or a bare type in Returns) with its type kept as text."""
    if not line or line[0].isspace() or "," not in line:
        return line
    name, sep, kind = line.partition(" : ")
    if not sep:
        name, kind = "", line
    if kind.lstrip().startswith("{"):  # numpydoc choices: griffe shows them, the first is default
        return line
    return name + sep + kind.replace(", ", "," + _NBSP)


def convert(text: str) -> str:
    """The Markdown form of one docstring (see the module docstring)."""
    text = _split_parameters(text)
    text = _math_blocks(text)
    text = _MATH_ROLE.sub(lambda m: f"\\({m.group(1)}\\)", text)
    return _ROLE.sub(_role, text)


class BayesmixDocstrings(griffe.Extension):
    """Rewrite the docstrings of bayesmix's objects for Markdown (see the module docstring)."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if not obj.path.startswith(_PACKAGE):
            return
        if obj.docstring is not None:
            obj.docstring.value = convert(obj.docstring.value)
        elif obj.is_attribute and obj.lineno is not None and obj.parent is not None:
            self._field_comment(obj)

    @staticmethod
    def _field_comment(obj: Any) -> None:
        """A field documented by a ``#:`` comment: trailing, or on the lines just above it."""
        try:
            lines = obj.parent.lines_collection[obj.filepath]
            line = lines[obj.lineno - 1]
        except (KeyError, IndexError, TypeError, AttributeError):
            return
        match = _FIELD_COMMENT.search(line)
        if match:
            text = match.group(1).strip()
        else:
            above: list[str] = []
            k = obj.lineno - 2
            while k >= 0 and lines[k].lstrip().startswith("#:"):
                above.insert(0, lines[k].lstrip()[2:].strip())
                k -= 1
            text = " ".join(above)
        if text:
            obj.docstring = griffe.Docstring(convert(text), lineno=obj.lineno, parent=obj)

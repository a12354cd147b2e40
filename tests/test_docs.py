"""The documentation: the site builds in strict mode, the README stays a front door, every command's
`--help` names its page, and every example in the README and in docs/ runs or says why it does not.

Every fenced block names its language. A ```bash or ```python block (an example) follows a marker line:

    <!-- example: unit -->                 run here, offline (tiny models, the catalog)
    <!-- example: integration -->          run here on the real default model (-m integration)
    <!-- example: illustrative: WHY -->    not run, and why (minutes of evaluation, your own model, ...)

A ```text block right after a command block is its output: the first line must appear in what the last
command printed (paths under /tmp/ point into the test's own folder, as the commands' do).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
README_MAX_LINES = 300
MARKER = re.compile(r"<!-- example: (unit|integration|illustrative)(: .+)? -->")
RUNNABLE = ("bash", "python")


@dataclass
class Block:
    page: Path
    line: int  # 1-based line of the opening fence
    lang: str
    code: str
    marker: str | None  # unit / integration / illustrative, or None when missing
    output: str | None = None  # the first line of the ```text block that follows, if any

    @property
    def id(self) -> str:
        return f"{self.page.relative_to(ROOT)}:{self.line}"


def blocks(page: Path) -> list[Block]:
    """Every fenced block of a page, with the marker line above it and the output block after it."""
    lines = page.read_text().split("\n")
    found, i = [], 0
    while i < len(lines):
        if not lines[i].startswith("```"):
            i += 1
            continue
        lang, start = lines[i][3:].strip(), i
        end = next(j for j in range(i + 1, len(lines)) if lines[j].startswith("```"))
        above = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        marker = MARKER.fullmatch(above.strip())
        found.append(Block(page, start + 1, lang, "\n".join(lines[start + 1:end]),
                           marker.group(1) if marker else None))
        i = end + 1
        if found[-1].lang == "bash" and i < len(lines) and lines[i] == "```text":
            found[-1].output = lines[i + 1] if i + 1 < len(lines) else None
    return found


ALL = [b for page in PAGES for b in blocks(page)]
EXAMPLES = [b for b in ALL if b.lang in RUNNABLE]


def _params(kind: str):
    return [pytest.param(b, id=b.id) for b in EXAMPLES if b.marker == kind]


# --- the site and the front door -------------------------------------------------------------------

def test_site_builds_in_strict_mode(tmp_path):
    if importlib.util.find_spec("mkdocs") is None:
        pytest.skip("mkdocs is not installed (pip install -e '.[docs]')")
    run = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                         cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "WARNING" not in run.stderr, run.stderr[-3000:]
    assert (tmp_path / "site" / "commands" / "detect" / "index.html").is_file()


def test_readme_is_a_front_door():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= README_MAX_LINES
    for page in re.findall(r"\]\((docs/[^)#]+)", text):  # every link into docs/ points at a page that exists
        assert (ROOT / page).exists(), page


def test_every_command_has_a_page_named_at_the_end_of_its_help():
    from superweight.cli import COMMANDS, build_parser, docs_page

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for name in COMMANDS:
        page = docs_page(name)
        assert (ROOT / page).is_file(), f"{name}: {page} is missing"
        assert sub.choices[name].format_help().rstrip().endswith(page), name


# --- the examples ----------------------------------------------------------------------------------

def test_every_block_names_its_language_and_every_example_is_marked():
    unnamed = [b.id for b in ALL if not b.lang]
    assert not unnamed, f"fenced blocks without a language (bash, python, text, ...): {unnamed}"
    unmarked = [b.id for b in EXAMPLES if b.marker is None]
    assert not unmarked, f"examples without <!-- example: unit|integration|illustrative: why -->: {unmarked}"
    assert _params("unit") and _params("integration")


def _commands(code: str) -> list[str]:
    """The command lines of a bash block: continuations joined, comments and blank lines dropped."""
    joined = re.sub(r"\\\n\s*", " ", code)
    return [line.split(" #")[0].strip() for line in joined.split("\n") if line.strip() and not line.startswith("#")]


def _run_bash(block: Block, tmp_path: Path) -> None:
    env = {**os.environ, "COLUMNS": "200", "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    out = ""
    for line in _commands(block.code):
        argv = shlex.split(line.replace("/tmp/", f"{tmp_path}/"))
        if argv[0] == "superweight":
            argv = [sys.executable, "-m", "superweight.cli", *argv[1:]]
        elif argv[0] == "python":
            argv = [sys.executable, *argv[1:]]
        else:
            pytest.fail(f"{block.id}: a runnable example starts with `superweight` or `python`: {line}")
        run = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, f"{block.id}: {line}\n{run.stderr[-3000:]}"
        out = run.stdout
    if block.output:
        expected = " ".join(block.output.replace("/tmp/", f"{tmp_path}/").split())
        assert expected in " ".join(out.split()), f"{block.id}: the output shown no longer starts with {expected!r}"


def _run_python(block: Block, monkeypatch, lm=None) -> None:
    if lm is not None:  # the examples' load_model("smollm2-135m"): the session's model
        import superweight.model

        real = superweight.model.load_model
        monkeypatch.setattr(superweight.model, "load_model",
                            lambda ref="smollm2-135m", **kw: lm if ref == "smollm2-135m" and not kw else real(ref, **kw))
    exec(compile(block.code, block.id, "exec"), {"__name__": "__docs__"})


@pytest.mark.parametrize("block", _params("unit"))
def test_unit_examples_run(block, tmp_path, monkeypatch):
    monkeypatch.delenv("SUPERWEIGHT_CATALOG", raising=False)
    monkeypatch.setenv("SUPERWEIGHT_CATALOG", str(tmp_path / "catalog.json"))  # never the user's own
    if block.lang == "bash":
        _run_bash(block, tmp_path)
    else:
        _run_python(block, monkeypatch)


@pytest.mark.integration
@pytest.mark.parametrize("block", _params("integration"))
def test_integration_examples_run(block, tmp_path, monkeypatch, default_lm, fetched_data):
    monkeypatch.setenv("SUPERWEIGHT_CATALOG", str(tmp_path / "catalog.json"))
    if block.lang == "bash":
        _run_bash(block, tmp_path)
    else:
        _run_python(block, monkeypatch, default_lm)


def test_the_command_line_registers_only_the_command_it_runs():
    from superweight.cli import COMMANDS, build_parser

    def registered(argv):
        return set(next(a for a in build_parser(argv)._actions if a.dest == "command").choices)

    assert registered(["detect", "--verify"]) == {"detect"}
    assert registered(["--version"]) == registered([]) == registered(["nope"]) == set(COMMANDS)

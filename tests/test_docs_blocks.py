"""Every code block of README.md, docs/ and the plugins' READMEs, as written: each Python block compiles, and each
command line of a shell block that calls an MRQ command parses with that command's real option parser (its plugins
loaded, so their options count). The blocks that other tests run in full (docs/plugins.md's worked example and its
packaging, docs/testing.md's example, the plugins' README configurations...) are run there; this file catches a
wrong flag or a typo anywhere else.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "plugins").glob("*/README.md"))]
BLOCK = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
COMMANDS = {"mrq-worker": "worker", "mrq-run": "run", "mrq-plugins": "common", "mrq-embedded": "worker",
            "mrq-dashboard": "dashboard"}
CALL = re.compile(r"^([A-Z_][A-Z0-9_]*=\S+\s+)*(\S*/)?mrq-(worker|run|plugins|embedded|dashboard)(\s|$)")
SIGNATURE = re.compile(r"^(def \w+\(.*\)(?: -> [^:\n]+)?|[ \t]+\)(?: -> [^:\n]+)?)$", re.M)
#: Plugins that the docs create in the text itself (not installed here): their names are accepted as written.
DOC_PLUGINS = {"notify", "myproject.mrq_plugin"}


def _blocks(kinds: tuple[str, ...]) -> list[tuple[str, int, str]]:
    found = []
    for path in DOCS:
        text = path.read_text()
        for match in BLOCK.finditer(text):
            if match.group(1) in kinds:
                line = text.count("\n", 0, match.start()) + 1
                found.append((str(path.relative_to(ROOT)), line, match.group(2)))
    return found


def _command_lines() -> list[tuple[str, int, str]]:
    """``(file, line, command)`` for each line of a shell or plain block that calls an MRQ command (continuation
    lines joined; output lines such as ``mrq-worker: error: ...`` left out)."""
    out = []
    for name, start, body in _blocks(("sh", "", "bash")):
        joined = body.replace("\\\n", " ")
        for offset, line in enumerate(joined.splitlines()):
            if not CALL.match(line.strip()):
                continue
            words = shlex.split(line, comments=True)
            while words and re.match(r"^[A-Z_][A-Z0-9_]*=", words[0]):  # VAR=value before the command
                words.pop(0)
            if words and Path(words[0]).name in COMMANDS and not words[0].endswith(":"):
                out.append((name, start + offset + 1, shlex.join([Path(words[0]).name, *words[1:]])))
    return out


PYTHON = _blocks(("python",))
LINES = _command_lines()


def test_the_docs_have_blocks_to_check():
    assert len(PYTHON) >= 40 and len(LINES) >= 20, (len(PYTHON), len(LINES))


@pytest.mark.parametrize("name, line, code", PYTHON, ids=[f"{n}:{ln}" for n, ln, _ in PYTHON])
def test_every_python_block_compiles(name, line, code):
    # A hook's signature in docs/plugins.md is a `def` line alone (test_hookspecs checks it against the spec).
    code = SIGNATURE.sub(r"\1: ...", code)
    compile(code, f"{name}:{line}", "exec")


@pytest.mark.parametrize("name, line, command", LINES, ids=[f"{n}:{ln}" for n, ln, _ in LINES])
def test_every_mrq_command_line_parses(name, line, command, tmp_path, monkeypatch):
    from mrq.config import get_config

    monkeypatch.chdir(tmp_path)  # no mrq-config.py of this checkout
    words = shlex.split(command)
    program, args = words[0], words[1:]
    plugins = next((args[i + 1] for i, a in enumerate(args[:-1]) if a == "--plugins"), "")
    if set(filter(None, plugins.split(","))) & DOC_PLUGINS:
        pytest.skip(f"{plugins}: a plugin the text itself creates (its own test runs it)")
    if program == "mrq-dashboard":
        from mrq_dashboard.cli import load_config

        load_config(args, prog=program)
        return
    get_config(COMMANDS[program], argv=args, env={}, extra={"embedded": False}, prog=program)

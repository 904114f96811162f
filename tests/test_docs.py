"""
The user guide cannot rot: every example in README.md runs here.

- Each ```python block runs as a script in a fresh interpreter. When a
  ```text block follows it directly, that is its exact expected stdout.
- Each ```console block is a shell session in a fresh directory: ``$ ``
  lines are commands, the lines after each one its exact expected stdout.
- The API reference builds with pydoctor without a warning (when the
  ``docs`` extra is installed).
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
FENCE = re.compile(r"^```(\S*)\s*$")


@dataclass
class Block:
    """A fenced block of README.md."""

    lang: str
    line: int  # of its first content line, 1-based
    text: str
    endLine: int  # of its closing fence, 1-based


def blocks(path: Path = README) -> list[Block]:
    found: list[Block] = []
    lang: str | None = None
    start = 0
    body: list[str] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        match = FENCE.match(line)
        if lang is None:
            if match:
                lang, start, body = match.group(1), number + 1, []
        elif match and not match.group(1):
            found.append(Block(lang, start, "\n".join(body) + "\n", number))
            lang = None
        else:
            body.append(line)
    assert lang is None, f"unclosed ``` block from line {start - 1}"
    return found


def pythonExamples() -> list[tuple[Block, str | None]]:
    """Each python block with its expected output (a text block right after it)."""
    allBlocks = blocks()
    lines = README.read_text(encoding="utf-8").splitlines()
    examples = []
    for i, block in enumerate(allBlocks):
        if block.lang != "python":
            continue
        expected = None
        if i + 1 < len(allBlocks) and allBlocks[i + 1].lang == "text":
            following = allBlocks[i + 1]
            between = lines[block.endLine : following.line - 2]
            if not any(line.strip() for line in between):
                expected = following.text
        examples.append((block, expected))
    return examples


def consoleSessions() -> list[tuple[int, list[tuple[str, str]]]]:
    """(line, [(command, expected stdout), ...]) for each console block."""
    sessions = []
    for block in blocks():
        if block.lang != "console":
            continue
        steps: list[tuple[str, str]] = []
        for line in block.text.splitlines():
            if line.startswith("$ "):
                steps.append((line[2:], ""))
            else:
                assert steps, f"README.md:{block.line}: output before any command"
                command, expected = steps[-1]
                steps[-1] = (command, expected + line + "\n")
        sessions.append((block.line, steps))
    return sessions


def test_the_readme_has_examples() -> None:
    assert len(pythonExamples()) >= 10
    assert len(consoleSessions()) >= 2


def test_the_readme_opens_with_the_two_commands() -> None:
    first = next(b for b in blocks() if b.lang == "sh")
    commands = [line for line in first.text.splitlines() if line and not line.startswith("#")]
    assert len(commands) == 2
    assert commands[1] == (
        "python3 -m venv .venv && . .venv/bin/activate"
        ' && python -m pip install -e ".[test]" && python -m pytest'
    )


@pytest.mark.parametrize(
    ("block", "expected"),
    pythonExamples(),
    ids=[f"README.md:{block.line}" for block, _ in pythonExamples()],
)
def test_python_example(block: Block, expected: str | None, tmp_path: Path) -> None:
    if "asynqueue.dask_worker" in block.text and importlib.util.find_spec("distributed") is None:
        pytest.skip('needs the dask extra: pip install -e ".[dask]"')
    script = tmp_path / f"readme_line_{block.line}.py"
    script.write_text(block.text, encoding="utf-8")
    result = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=30,
    )
    assert result.returncode == 0, f"README.md:{block.line} failed:\n{result.stderr}"
    if expected is not None:
        assert result.stdout == expected, f"README.md:{block.line}: output differs"


@pytest.mark.parametrize(
    ("line", "steps"),
    consoleSessions(),
    ids=[f"README.md:{line}" for line, _ in consoleSessions()],
)
def test_console_example(line: int, steps: list[tuple[str, str]], tmp_path: Path) -> None:
    # "asynqueue" runs this interpreter's asynqueue, installed or not.
    shim = tmp_path / "bin" / "asynqueue"
    shim.parent.mkdir()
    shim.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m asynqueue "$@"\n')
    shim.chmod(0o755)
    env = dict(os.environ, PATH=f"{shim.parent}{os.pathsep}{os.environ.get('PATH', '')}")
    for command, expected in steps:  # one session: the commands share a directory
        result = subprocess.run(
            ["/bin/sh", "-c", command],
            capture_output=True,
            text=True,
            cwd=tmp_path,
            env=env,
            timeout=60,
        )
        assert result.stdout == expected, f"README.md:{line}: {command}\n{result.stderr}"


def test_api_docs_build_without_warnings(tmp_path: Path) -> None:
    if importlib.util.find_spec("pydoctor") is None:
        pytest.skip('pydoctor is not installed (pip install -e ".[docs]")')
    output = tmp_path / "apidocs"
    result = subprocess.run(
        [sys.executable, "-m", "pydoctor", "--quiet", "-W", f"--html-output={output}"],
        capture_output=True,
        text=True,
        cwd=ROOT,  # for the [tool.pydoctor] settings in pyproject.toml
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (output / "index.html").exists()

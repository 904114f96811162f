"""
Run the original AsynQueue 0.9.9 test suite against this package.

A measurement, not part of our tests: nothing of the original is kept in this
repository. From nothing, in a scratch directory outside the repository:

1. make a virtual environment there and install ``asynqueue==0.9.9``,
   ``six`` and ``numpy`` into it (the original's own dependencies come
   along; its process tests import numpy), and numpy for our run into a
   folder of its own there (``extra``: the interpreter that runs ours is
   left as it is);
2. copy its installed ``asynqueue/test`` folder out as a package ``aqtests``;
3. rewrite only the imports of its own helpers so that they load *our*
   ``asynqueue`` (see `rewrite`), and one import of a name zope.interface
   no longer has (`dropRemovedImport`, in the original's copy too);
4. run ``python -m twisted.trial aqtests`` with our ``src`` first on the path,
   and print the counts and every test that did not pass.

``--baseline`` also runs the original suite on the original package once.
See docs/compatibility.md.

Usage::

    python scripts/upstream_suite.py [--scratch DIR] [--baseline]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
UPSTREAM = "asynqueue==0.9.9"
# The whole run (ours takes a minute or two). The original on itself now and
# then never exits after its last test: it is stopped, and counted from its
# per-test verdicts.
RUN_SECONDS = 300


def cleanEnv() -> dict[str, str]:
    """This environment without PYTHONPATH (which may point at our package)."""
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def run(cmd: list[str]) -> None:
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True, env=cleanEnv())


def makeVenv(scratch: Path) -> Path:
    """The scratch venv's python, with the original installed."""
    venv = scratch / "aq099-venv"
    python = venv / "bin" / "python"
    if not python.exists():
        run([sys.executable, "-m", "venv", str(venv)])
    run([str(python), "-m", "pip", "install", "-q", UPSTREAM, "six", "numpy"])
    return python


def extraFolder(scratch: Path, python: str) -> Path:
    """A folder with numpy for *python* (our run's interpreter), off its own site-packages."""
    extra = scratch / "extra"
    if not (extra / "numpy").exists():
        run([python, "-m", "pip", "install", "-q", "--target", str(extra), "numpy"])
    return extra


def upstreamPackage(python: Path) -> Path:
    out = subprocess.run(
        [str(python), "-c", "import asynqueue, os; print(os.path.dirname(asynqueue.__file__))"],
        check=True,
        capture_output=True,
        text=True,
        cwd="/",
        env=cleanEnv(),
    )
    return Path(out.stdout.strip())


def rewrite(text: str, ownModules: set[str]) -> str:
    """
    Point the original tests' imports of their own helpers at our package:
    ``asynqueue.test.testbase`` becomes ``aqtests.testbase``; the relative
    ``from .. import X`` / ``from ..X import`` forms become absolute
    ``asynqueue`` imports; and the bare-name imports of the package's own
    modules (``import threads``, ``from util import ...``, which worked only
    through the original's ``sys.path`` hack in ``test/__init__.py``) become
    ``asynqueue`` imports too. Nothing else changes.
    """
    text = text.replace("asynqueue.test.testbase", "aqtests.testbase")
    text = re.sub(r"^(\s*)from \.\. import ", r"\1from asynqueue import ", text, flags=re.M)
    text = re.sub(r"^(\s*)from \.\.(\w+) import ", r"\1from asynqueue.\2 import ", text, flags=re.M)

    def bareImport(m: re.Match[str]) -> str:
        indent, name = m.group(1), m.group(2)
        return f"{indent}from asynqueue import {name}" if name in ownModules else m.group(0)

    def bareFrom(m: re.Match[str]) -> str:
        indent, name = m.group(1), m.group(2)
        return f"{indent}from asynqueue.{name} import " if name in ownModules else m.group(0)

    text = re.sub(r"^(\s*)import (\w+)\s*$", bareImport, text, flags=re.M)
    return re.sub(r"^(\s*)from (\w+) import ", bareFrom, text, flags=re.M)


def dropRemovedImport(text: str) -> str:
    """
    ``from zope.interface import implements``: zope.interface removed that
    name years ago, so the module fails to import on either package; the
    tests that import it never use it. Import a name that exists instead.
    """
    return re.sub(
        r"^(\s*)from zope\.interface import implements\s*$",
        r"\1from zope.interface import implementer as implements",
        text,
        flags=re.M,
    )


def portBaseline(package: Path) -> None:
    """The same import fix in the original's own tests (in the scratch venv)."""
    for path in (package / "test").glob("*.py"):
        text = path.read_text()
        fixed = dropRemovedImport(text)
        if fixed != text:
            path.write_text(fixed)


def copyTests(package: Path, scratch: Path) -> Path:
    target = scratch / "aqtests"
    if target.exists():
        shutil.rmtree(target)
    shutil.copytree(package / "test", target, ignore=shutil.ignore_patterns("__pycache__"))
    ownModules = {p.stem for p in package.glob("*.py")} - {"__init__"}
    for path in target.glob("*.py"):
        path.write_text(dropRemovedImport(rewrite(path.read_text(), ownModules)))
    return target


def trial(python: Path | str, module: str, cwd: Path, pythonPath: str, log: Path) -> str:
    """Run trial on *module*; its whole output (also saved to *log*)."""
    env = dict(cleanEnv(), PYTHONPATH=pythonPath)
    tempDir = cwd / f"_trial_temp_{log.stem}"
    print(f"+ (in {cwd}) PYTHONPATH={pythonPath} {python} -m twisted.trial {module}", flush=True)
    with log.open("w") as out:
        proc = subprocess.Popen(
            [str(python), "-m", "twisted.trial", f"--temp-directory={tempDir}", module],
            cwd=cwd,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            proc.wait(RUN_SECONDS)
        except subprocess.TimeoutExpired:
            print(f"trial still running after {RUN_SECONDS} s: stopped", flush=True)
        finally:
            # The run's own process group only: stray worker processes too.
            if proc.poll() is None or _groupAlive(proc.pid):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return log.read_text(errors="replace")


def _groupAlive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def summarize(title: str, output: str) -> None:
    """Print trial's counts and the tests that failed or erred."""
    ran = re.findall(r"^Ran (\d+) tests? in", output, flags=re.M)
    verdict = re.findall(r"^(PASSED|FAILED) \((.*)\)$", output, flags=re.M)
    print(f"\n== {title}")
    if ran and verdict:
        print(f"tests: {ran[-1]}   {' '.join(verdict[-1])}")
    else:
        marks = re.findall(r"\[(OK|FAIL|ERROR|SKIPPED)\]\s*$", output, flags=re.M)
        counts = {mark: marks.count(mark) for mark in ("OK", "FAIL", "ERROR", "SKIPPED")}
        print(f"no summary (trial did not finish); per-test verdicts seen: {counts}")
    bad: dict[str, str] = {}
    kind = None
    for line in output.splitlines():
        if line.startswith("[FAIL]") or line.startswith("[ERROR]"):
            kind = line.strip("[]")
        elif kind and re.fullmatch(r"(aqtests|asynqueue\.test)\.[\w.]+", line):
            bad.setdefault(line, kind)
    for name, kind in sorted(bad.items()):
        print(f"  {kind:5s} {name}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--scratch",
        type=Path,
        default=Path("/tmp/asynqueue-upstream-suite"),
        help="work directory, outside the repository (default: %(default)s)",
    )
    parser.add_argument("--baseline", action="store_true", help="also run the original on itself")
    parser.add_argument(
        "--python",
        default=sys.executable,
        help="interpreter with our dependencies (default: this one)",
    )
    args = parser.parse_args()
    scratch = args.scratch.resolve()
    if scratch == REPO or REPO in scratch.parents:
        parser.error("the scratch directory must be outside the repository")
    scratch.mkdir(parents=True, exist_ok=True)

    venvPython = makeVenv(scratch)
    package = upstreamPackage(venvPython)
    copyTests(package, scratch)

    if args.baseline:
        portBaseline(package)
        output = trial(venvPython, "asynqueue.test", package.parent, "", scratch / "baseline.log")
        summarize("the original suite on the original package", output)
    src = str(REPO / "src")
    extra = extraFolder(scratch, args.python)
    output = trial(
        args.python,
        "aqtests",
        scratch,
        os.pathsep.join([src, str(scratch), str(extra)]),
        scratch / "ours.log",
    )
    summarize(f"the original suite on ours ({src})", output)
    print(f"\nfull output: {scratch}/ours.log")
    return 0


if __name__ == "__main__":
    sys.exit(main())

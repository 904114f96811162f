"""
What every test run needs, before any test module is imported.

- Dask's statistical profiler is off, in this process and in the Dask
  processes the tests start (they inherit the environment): on Python 3.11
  it can deadlock a whole process (CPython gh-106883; see
  asynqueue/_dask/_cluster.py). It only feeds Dask's dashboard.
- Hangs end the run. pytest-timeout and trial's own timeout raise inside the
  interpreter, so a process whose threads all wait for the GIL never sees
  them; faulthandler's timer runs in C. pyproject.toml has pytest arm it for
  each test (``faulthandler_timeout``, exiting); here it also guards the
  interpreter's exit after the last test (thread joins, atexit handlers).
"""

from __future__ import annotations

import faulthandler
import os
import sys

import pytest

os.environ.setdefault("DASK_DISTRIBUTED__WORKER__PROFILE__ENABLED", "False")
if "dask" in sys.modules:  # imported already (by a plugin): its config is read
    import dask

    dask.config.set({"distributed.worker.profile.enabled": False})

EXIT_LIMIT = 120.0
_stderr: list[int] = []


def pytest_configure(config: pytest.Config) -> None:
    # The stream pytest's own faulthandler dumps to: not the captured one.
    for stream in (sys.stderr, sys.__stderr__):
        try:
            _stderr.append(os.dup(stream.fileno()))  # type: ignore[union-attr]
            return
        except (AttributeError, ValueError, OSError):
            continue


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _stderr:
        faulthandler.dump_traceback_later(EXIT_LIMIT, exit=True, file=_stderr[0])

"""The public surface: names, original module paths, and a light import."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest

import asynqueue

# The original AsynQueue's public module paths must stay importable.
ORIGINAL_MODULES = [
    "asynqueue.base",
    "asynqueue.tasks",
    "asynqueue.workers",
    "asynqueue.threads",
    "asynqueue.process",
    "asynqueue.iteration",
    "asynqueue.util",
    "asynqueue.info",
    "asynqueue.interfaces",
    "asynqueue.errors",
    "asynqueue.null",
    "asynqueue.wire",
    "asynqueue.misc",
]

# (module, name) pairs of the original API, by their original paths.
ORIGINAL_NAMES = [
    ("asynqueue.base", "TaskQueue"),
    ("asynqueue.tasks", "Task"),
    ("asynqueue.workers", "AsyncWorker"),
    ("asynqueue.workers", "ThreadWorker"),
    ("asynqueue.workers", "ProcessWorker"),
    ("asynqueue.threads", "ThreadQueue"),
    ("asynqueue.threads", "ThreadWorker"),
    ("asynqueue.threads", "deferToThread"),
    ("asynqueue.process", "ProcessQueue"),
    ("asynqueue.process", "ProcessWorker"),
    ("asynqueue.process", "ProcessBase"),
    ("asynqueue.iteration", "Deferator"),
    ("asynqueue.iteration", "IterationProducer"),
    ("asynqueue.iteration", "iteratorToProducer"),
    ("asynqueue.iteration", "ListConsumer"),
    ("asynqueue.iteration", "Prefetcherator"),
    ("asynqueue.iteration", "isIterator"),
    ("asynqueue.iteration", "deferToDelay"),
    ("asynqueue.util", "DeferredTracker"),
    ("asynqueue.util", "DeferredLock"),
    ("asynqueue.util", "CallRunner"),
    ("asynqueue.util", "callAfterDeferred"),
    ("asynqueue.info", "Info"),
    ("asynqueue.info", "showResult"),
    ("asynqueue.interfaces", "IWorker"),
    ("asynqueue.null", "NullQueue"),
    ("asynqueue.wire", "WireWorker"),
    ("asynqueue.wire", "WireServer"),
    ("asynqueue.wire", "WireWorkerUniverse"),
    # restored for the original's own test suite (see docs/compatibility.md)
    ("asynqueue.base", "Priority"),
    ("asynqueue.tasks", "TaskHandler"),
    ("asynqueue.tasks", "Assignment"),
    ("asynqueue.tasks", "AssignmentFactory"),
    ("asynqueue.threads", "TaskQueue"),
    ("asynqueue.threads", "ThreadLooper"),
    ("asynqueue.threads", "PoolUser"),
    ("asynqueue.threads", "IterationGetter"),
    ("asynqueue.threads", "Consumerator"),
    ("asynqueue.threads", "Filerator"),
    ("asynqueue.threads", "OrderedItemProducer"),
    ("asynqueue.iteration", "Delay"),
    ("asynqueue.util", "TestStuff"),
    ("asynqueue.misc", "TestMethods"),
    ("asynqueue.misc", "TestUniverse"),
    ("asynqueue.wire", "ChunkyString"),
    ("asynqueue.wire", "ServerManager"),
    ("asynqueue.wire", "WireRunner"),
    *[
        ("asynqueue.errors", name)
        for name in (
            "QueueRunError",
            "ImplementationError",
            "NotReadyError",
            "InvariantError",
            "TimeoutError",
            "WorkerError",
            "ThreadError",
            "ProcessError",
        )
    ],
]


@pytest.mark.parametrize("module", ORIGINAL_MODULES)
def test_original_modules_import_and_declare_all(module):
    mod = importlib.import_module(module)
    assert isinstance(mod.__all__, list)
    for name in mod.__all__:
        assert getattr(mod, name) is not None, f"{module}.{name}"


@pytest.mark.parametrize(("module", "name"), ORIGINAL_NAMES)
def test_original_names_at_original_paths(module, name):
    assert getattr(importlib.import_module(module), name) is not None


def test_top_level_all_lists_exactly_what_resolves():
    assert asynqueue.__all__ == sorted(asynqueue.__all__)
    for name in asynqueue.__all__:
        if name.startswith("Dask"):
            continue  # resolving it imports Dask; checked in test_dask
        assert getattr(asynqueue, name) is not None
    with pytest.raises(AttributeError):
        asynqueue.NoSuchThing  # noqa: B018


def test_original_top_level_exports():
    for name in (
        "AsyncWorker", "TaskQueue", "ThreadQueue", "ThreadWorker", "deferToThread",
        "deferToDelay", "ProcessBase", "ProcessQueue", "ProcessWorker", "showResult",
        "Info", "DeferredTracker", "DeferredLock",
    ):  # fmt: skip
        assert name in asynqueue.__all__


def test_importing_the_package_is_light():
    code = (
        "import sys, asynqueue\n"
        "heavy = [m for m in ('twisted.internet.reactor', 'twisted', 'dask', 'distributed',"
        " 'cloudpickle') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "asynqueue.TaskQueue\n"
        "assert 'twisted.internet.reactor' not in sys.modules, 'installed a reactor'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_futures_module_is_light_and_resolves_its_names():
    code = (
        "import sys, concurrent.futures, asynqueue.futures as f\n"
        "assert 'twisted' not in sys.modules, 'the helpers children unpickle must stay lean'\n"
        "for name in f.__all__: assert getattr(f, name) is not None, name\n"
        "for name in ('ProcessPoolExecutor', 'ThreadPoolExecutor', 'QueueExecutor'):\n"
        "    assert issubclass(getattr(f, name), concurrent.futures.Executor), name\n"
        "assert f.wait is concurrent.futures.wait\n"
        "assert 'twisted.internet.reactor' not in sys.modules, 'installed a reactor'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_status_is_public_beside_task():
    import asynqueue.tasks
    from asynqueue._support._status import Status

    assert asynqueue.tasks.Status is Status
    assert asynqueue.Status is Status
    assert "Status" in asynqueue.tasks.__all__

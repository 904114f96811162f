"""Info: call descriptions, unique IDs, exception texts, showResult."""

from __future__ import annotations

import io
import pickle
import threading
from contextlib import redirect_stdout
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.python.failure import Failure
from twisted.trial import unittest

import asynqueue._support._info as infoModule
from asynqueue.info import Info, InfoHolder, hashIt, showResult, whichThread


def divide(x: float, y: float) -> float:
    return x / y


class Thing:
    def method(self, x: int, key: str = "k") -> int:
        return x


class InfoIDTest(unittest.TestCase):
    timeout = 10

    def test_uniqueIDs(self) -> None:
        info = Info()
        ids = {
            info.setCall(divide, (1, 2)).ID,
            info.setCall(divide, (2, 1)).ID,
            info.setCall(divide, (1, 2)).ID,  # the same call again is another call
            Info().setCall(divide, (1, 2)).ID,
        }
        self.assertEqual(len(ids), 4)

    def test_IDStableForOneCall(self) -> None:
        info = Info().setCall(divide, (1, 2))
        self.assertEqual(info.ID, info.ID)

    def test_noCall(self) -> None:
        info = Info()
        self.assertIsNone(info.ID)
        self.assertRaises(ValueError, info.setCall, args=(1,))

    def test_setCallForms(self) -> None:
        info = Info(remember=True)
        info.setCall(divide)
        self.assertEqual(info.getInfo(info.ID, "callDict")["args"], ())
        info.setCall(divide, 5)
        self.assertEqual(info.getInfo(info.ID, "callDict")["args"], (5,))
        info.setCall(divide, [5, 6], {"z": 1})
        callDict = info.getInfo(info.ID, "callDict")
        self.assertEqual((callDict["args"], callDict["kw"]), ((5, 6), {"z": 1}))
        info.setCall(args=[7], kw={})
        self.assertEqual(info.getInfo(info.ID, "callDict")["args"], (7,))
        self.assertRaises(TypeError, info.setCall, bogus=1)

    def test_rememberAndForget(self) -> None:
        info = Info(remember=True)
        ID = info.setCall(divide, (1, 2)).ID
        info.setCall(divide, (3, 4))
        self.assertEqual(info.aboutCall(ID), "divide(1, 2)")
        self.assertEqual(info.getInfo(ID, "callDict")["args"], (1, 2))
        info.forgetID(ID)
        self.assertIsNone(info.getInfo(ID, "callDict"))
        self.assertNotIn(ID, info.pastInfo)

    def test_notRememberedByDefault(self) -> None:
        info = Info()
        info.setCall(divide, (1, 2)).ID  # noqa: B018
        self.assertEqual(info.pastInfo, {})

    def test_saveInfo(self) -> None:
        info = Info(remember=True)
        ID = info.setCall(divide).ID
        self.assertEqual(info.saveInfo("note", 42), ID)
        self.assertEqual(info.getInfo(ID, "note"), 42)
        self.assertEqual(info.getInfo(ID, "note", nowForget=True), 42)
        self.assertIsNone(info.getInfo(ID, "note"))

    def test_context(self) -> None:
        info = Info(remember=True)
        with info.context(divide, (1, 0)) as holder:
            self.assertIsInstance(holder, InfoHolder)
            self.assertEqual(holder.aboutCall(), "divide(1, 0)")
            self.assertEqual(holder.getInfo("callDict")["f"], divide)
            try:
                divide(1, 0)
            except ZeroDivisionError:
                self.assertIn("division by zero", holder.aboutException())
            self.assertIn(holder.ID, info.pastInfo)
        self.assertNotIn(holder.ID, info.pastInfo)


class AboutTest(unittest.TestCase):
    timeout = 10

    def test_aboutCall(self) -> None:
        info = Info()
        self.assertEqual(
            info.setCall(divide, (1, 2), {"z": "a"}).aboutCall(), "divide(1, 2, z='a')"
        )
        self.assertEqual(
            info.setCall(Thing().method, (3,), {"key": "v"}).aboutCall(),
            "Thing.method(3, key='v')",
        )
        self.assertEqual(info.setCall("os.path.join", ("a",)).aboutCall(), "os.path.join('a')")
        self.assertEqual(Info().aboutCall(), "<no call>")

    def test_aNonCallableIsSaidToBeOne(self) -> None:
        info = Info(remember=True)
        ID = info.setCall(None, (1,), {}).ID
        self.assertEqual(info.aboutCall(), "None[Not Callable!](1)")
        self.assertEqual(info.getInfo(ID, "callDict")["fs"], "None[Not Callable!]")

    def test_callDictNamesTheCallable(self) -> None:
        # The original's "fs": the callable's name (a string call: itself).
        info = Info(remember=True)
        for f, fs in ((divide, "divide"), (Thing().method, "Thing.method"), ("os.sep", "os.sep")):
            ID = info.setCall(f, (), {}).ID
            callDict = info.getInfo(ID, "callDict")
            self.assertEqual((callDict["f"], callDict["fs"]), (f, fs))

    def test_longArgumentsShortened(self) -> None:
        text = Info().setCall(divide, ("x" * 500,)).aboutCall()
        self.assertLess(len(text), 100)
        self.assertIn("...", text)

    def test_whichThread(self) -> None:
        text = Info(whichThread=True).setCall(divide).aboutCall()
        self.assertTrue(text.endswith(f"<Thread: {threading.current_thread().name}>"))

    def test_aboutException(self) -> None:
        info = Info().setCall(divide, (1, 0))
        try:
            divide(1, 0)
        except ZeroDivisionError:
            text = info.aboutException()
        lines = text.splitlines()
        self.assertTrue(lines[0].startswith("Exception 'division by zero"))
        self.assertIn("doing call 'divide(1, 0)'", lines[1])
        self.assertEqual(set(lines[2]), {"-"})
        self.assertIn("return x / y", text)

    def test_colonsAreKept(self) -> None:
        error = ValueError("path: /a:b, reason: bad")
        text = Info().setCall(divide).aboutException(exception=error)
        self.assertIn("Exception 'path: /a:b, reason: bad'", text.splitlines()[0])

    def test_aboutFailure(self) -> None:
        try:
            divide(1, 0)
        except ZeroDivisionError:
            failure = Failure()
        info = Info(remember=True)
        ID = info.setCall(divide, (1, 0)).ID
        text = info.aboutFailure(failure, ID, nowForget=True)
        self.assertTrue(text.startswith("Failure 'division by zero'"))
        self.assertIn("divide(1, 0)", text)
        self.assertIn("ZeroDivisionError", text)
        self.assertNotIn(ID, info.pastInfo)

    def test_remoteTraceback(self) -> None:
        error = RuntimeError("far away")
        error.remoteTraceback = "Traceback: remote frames here"  # type: ignore[attr-defined]
        text = Info().aboutFailure(Failure(error))
        self.assertIn("remote frames here", text)

    def test_nn(self) -> None:
        info = Info()
        namespace, name = info.setCall(divide).nn()
        self.assertIsNone(namespace)
        self.assertIs(pickle.loads(name), divide)
        self.assertEqual(info.setCall(divide).nn(raw=True), (None, divide))
        thing = Thing()
        namespace, name = info.setCall(thing.method).nn()
        self.assertEqual(name, "method")
        self.assertIsInstance(pickle.loads(namespace), Thing)
        self.assertEqual(info.setCall(thing.method).nn(raw=True), (thing, "method"))
        self.assertEqual(info.setCall("os.path.join").nn(), (None, "os.path.join"))
        self.assertEqual(info.setCall("no.such.thing").nn(), (None, None))
        self.assertEqual(Info().nn(), (None, None))

    def test_nnUnpicklable(self) -> None:
        info = Info()
        _, name = info.setCall(lambda: None).nn()
        self.assertIsNone(name)


class HashItTest(unittest.TestCase):
    def test_equalValuesHashAlike(self) -> None:
        value = {"a": [1, 2.5, ("x", None)], 3: {4, 5}, "d": {"k": b"v"}}
        rebuilt = pickle.loads(pickle.dumps(value))
        self.assertIsNot(rebuilt, value)
        self.assertEqual(hashIt(value), hashIt(rebuilt))
        self.assertEqual(hashIt(1, "a"), hashIt(1, "a"))

    def test_orderAndKindCount(self) -> None:
        # (The original's sum of hashes gave these pairs the same value.)
        samples = [
            None, "abc", "def", 1, 2.5, divide, [1, 2], [2, 1], (1, 2),
            {"a": 1, "b": 2}, {"a": 2, "b": 1}, {1, 2}, ((1, 2),), [[1], [2]],
        ]  # fmt: skip
        hashes = [hashIt(x) for x in samples]
        self.assertEqual(len(set(hashes)), len(samples))
        self.assertNotEqual(hashIt(1, 2), hashIt(2, 1))

    def test_neitherHashableNorPicklableCountsByIdentity(self) -> None:
        class Opaque:
            __hash__ = None  # type: ignore[assignment]

            def __reduce__(self) -> Any:
                raise TypeError("not this one")

        one = Opaque()
        self.assertEqual(hashIt([one]), hashIt([one]))
        self.assertNotEqual(hashIt([one]), hashIt([Opaque()]))


class ShowResultTest(unittest.TestCase):
    timeout = 10

    def setUp(self) -> None:
        self.patch(infoModule, "_showThread", False)

    def capture(self, f: Any, *args: Any) -> tuple[Any, str]:
        out = io.StringIO()
        with redirect_stdout(out):
            result = f(*args)
        return result, out.getvalue()

    def test_value(self) -> None:
        result, out = self.capture(showResult(divide), 6, 3)
        self.assertEqual(result, 2)
        self.assertEqual(out, "divide(6, 3) -> 2.0\n")

    def test_deferred(self) -> None:
        d: Deferred[int] = Deferred()
        shown = showResult(lambda: d)
        result, out = self.capture(shown)
        self.assertEqual(out, "")
        _, out = self.capture(d.callback, 5)
        self.assertIn("-> 5", out)
        self.assertEqual(self.successResultOf(result), 5)

    def test_failedDeferred(self) -> None:
        d: Deferred[int] = Deferred()
        result, _ = self.capture(showResult(lambda: d))
        _, out = self.capture(d.errback, KeyError("k"))
        self.assertIn("-> Failure KeyError", out)
        self.failureResultOf(result, KeyError)

    def test_raises(self) -> None:
        out = io.StringIO()
        with redirect_stdout(out), self.assertRaises(ZeroDivisionError):
            showResult(divide)(1, 0)
        self.assertIn("divide(1, 0) -> raised ZeroDivisionError", out.getvalue())

    def test_keepsName(self) -> None:
        self.assertEqual(showResult(divide).__name__, "divide")

    def test_whichThread(self) -> None:
        self.assertIs(whichThread(divide), divide)
        _, out = self.capture(showResult(lambda: succeed(1)))
        self.assertIn("<Thread: ", out)

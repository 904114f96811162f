"""The wire protocol's pure parts: framing, codec, iterator batches."""

from __future__ import annotations

import pickle
import struct
import subprocess
import sys
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from asynqueue._process._child import BOOTSTRAP, ProcessBase, leanCode
from asynqueue._process._parent import PACKAGE_DIR
from asynqueue._wire import _codec, _framing
from asynqueue._wire._framing import (
    BYTES_MIN,
    HEADER,
    SMALL_MESSAGE,
    FrameDecoder,
    FramingError,
    OversizeMessage,
    SendQueue,
    encode,
    encodeBytes,
)
from asynqueue._wire._streams import IteratorTable, isIterator

# ------------------------------------------------------------------ framing

partsStrategy = st.lists(st.binary(max_size=300), max_size=6)
messagesStrategy = st.lists(st.tuples(st.integers(0, 255), partsStrategy), min_size=1, max_size=8)


def _asTuples(messages: list[Any]) -> list[tuple[int, list[bytes]]]:
    return [(m.kind, [bytes(p) for p in m.parts]) for m in messages]


@given(messagesStrategy, st.lists(st.integers(1, 97), min_size=1, max_size=20))
def test_feed_in_any_pieces_gives_back_the_messages(
    messages: list[tuple[int, list[bytes]]], cuts: list[int]
) -> None:
    stream = b"".join(encodeBytes(kind, parts) for kind, parts in messages)
    decoder = FrameDecoder()
    out = []
    pos, i = 0, 0
    while pos < len(stream):
        size = cuts[i % len(cuts)]
        out.extend(decoder.feed(stream[pos : pos + size]))
        pos += size
        i += 1
    assert _asTuples(out) == messages
    assert decoder.pending() == 0


_BLOCK = bytes(range(256)) * 2048  # 512 KiB to cut parts from
_SIZES = [0, 1, 1000, SMALL_MESSAGE - 17, BYTES_MIN - 1, BYTES_MIN, BYTES_MIN + 5, 2 * BYTES_MIN]
largePartsStrategy = st.lists(
    st.tuples(st.sampled_from(_SIZES), st.booleans(), st.integers(0, 255)), min_size=1, max_size=4
)


def _makePart(size: int, immutable: bool, offset: int) -> Any:
    data = (_BLOCK[offset:] + _BLOCK)[:size] if size <= 2 * BYTES_MIN else bytes(size)
    return data if immutable else bytearray(data)


@settings(max_examples=60, deadline=None)
@given(
    st.lists(largePartsStrategy, min_size=1, max_size=3),
    st.integers(1, 300_000),
    st.sampled_from(["none", "declined", "accepted"]),
)
@example([[(0, False, 0)], [(BYTES_MIN, True, 0)]], 1, "accepted")  # a marked first part, relayed
def test_large_and_immutable_parts_come_back_whole_in_any_reads(
    specs: list[list[tuple[int, bool, int]]], readSize: int, early: str
) -> None:
    messages = [[_makePart(*spec) for spec in parts] for parts in specs]
    stream = memoryview(b"".join(encodeBytes(17, parts) for parts in messages))
    asked = {"none": None, "declined": lambda m: False, "accepted": lambda m: True}[early]
    decoder = FrameDecoder(early=asked)
    out = []
    pos = 0
    while pos < len(stream):
        buf = decoder.getBuffer()
        # Tiny reads through the heads (headers, tables, first parts), then larger ones.
        step = readSize if pos < 20_000 or readSize > 4096 else 65_536
        n = min(len(buf), step, len(stream) - pos)
        buf[:n] = stream[pos : pos + n]
        del buf
        pos += n
        out.extend(decoder.bufferUpdated(n))
    assert decoder.pending() == 0
    assert [[bytes(p) for p in m.parts] for m in out] == [[bytes(p) for p in m] for m in messages]
    for message, parts in zip(out, messages, strict=True):
        handedEarly = message.filling is not None
        assert not handedEarly or message.filling.done
        for got, sent in zip(message.parts, parts, strict=True):
            marked = type(sent) is bytes and len(sent) >= BYTES_MIN
            if marked and not handedEarly:
                assert type(got) is bytes  # read straight into a bytes object
            elif marked:
                assert got.readonly  # relayed: stays marked when sent on
            elif len(sent):
                assert type(got) is memoryview and not got.readonly


@given(messagesStrategy, st.integers(1, 5000))
def test_reading_into_the_decoder_buffer_gives_back_the_messages(
    messages: list[tuple[int, list[bytes]]], readSize: int
) -> None:
    stream = memoryview(b"".join(encodeBytes(kind, parts) for kind, parts in messages))
    decoder = FrameDecoder()
    out = []
    pos = 0
    while pos < len(stream):
        buf = decoder.getBuffer()
        n = min(len(buf), readSize, len(stream) - pos)
        buf[:n] = stream[pos : pos + n]
        pos += n
        out.extend(decoder.bufferUpdated(n))
    assert _asTuples(out) == messages


def test_large_message_is_read_into_its_own_buffer() -> None:
    big = bytearray(range(256)) * (SMALL_MESSAGE // 64)  # 4 x SMALL_MESSAGE, mutable
    stream = encodeBytes(7, [b"head", big]) + encodeBytes(8, [b"after"])
    decoder = FrameDecoder()
    out = decoder.feed(stream[:1000])
    assert out == []
    # The rest of the big body goes straight into one buffer of its size.
    buf = decoder.getBuffer()
    assert len(buf) == len(stream) - 1000 - (HEADER.size + 13)
    out = decoder.feed(stream[1000:])
    assert _asTuples(out) == [(7, [b"head", big]), (8, [b"after"])]
    assert out[0].parts[1].readonly is False


def test_encode_does_not_copy_parts_and_skips_empty_ones() -> None:
    part = bytearray(b"abc")
    buffers = encode(3, [part, b"", memoryview(b"xy")])
    assert buffers[1] is part
    assert len(buffers) == 3
    kind, flags, nparts, length = HEADER.unpack_from(buffers[0])
    assert (kind, flags, nparts, length) == (3, 0, 3, 3 * 8 + 5)


def test_oversize_message_is_refused_before_allocation() -> None:
    decoder = FrameDecoder(maxLength=1000)
    with pytest.raises(OversizeMessage):
        decoder.feed(HEADER.pack(1, 0, 0, 10**12))


def test_a_frame_larger_than_memory_is_refused_without_a_limit() -> None:
    # Bytes that are not frames (a child's code writing to its socket): a
    # clear framing error, which closes the channel, not a MemoryError.
    for header in (HEADER.pack(1, 0, 0, 2**64 - 1), HEADER.pack(1, 0, 0, 2**62)):
        with pytest.raises(OversizeMessage):
            FrameDecoder().feed(header)


def test_corrupt_frames_raise() -> None:
    with pytest.raises(FramingError):
        FrameDecoder().feed(HEADER.pack(1, 0, 5, 8))  # 5 parts cannot fit in 8 bytes
    bad = HEADER.pack(1, 0, 1, 8 + 4) + struct.pack("!Q", 3) + b"abcd"
    with pytest.raises(FramingError):
        FrameDecoder().feed(bad)
    with pytest.raises(FramingError):
        FrameDecoder().feed(HEADER.pack(1, 0, 0, 2) + b"xx")


@given(st.lists(st.binary(min_size=1, max_size=50), max_size=20), st.lists(st.integers(0, 60)))
def test_send_queue_survives_partial_writes(buffers: list[bytes], writes: list[int]) -> None:
    queue = SendQueue()
    queue.append(buffers)
    written = b""
    for n in [*writes, 10**6]:
        if not queue:
            break
        chunk = b"".join(bytes(b) for b in queue.peek())[:n]
        queue.advance(len(chunk))
        written += chunk
    assert written == b"".join(buffers)
    assert queue.size == 0 and not queue


def test_send_queue_peek_is_bounded() -> None:
    queue = SendQueue()
    queue.append([b"x"] * (_framing.MAX_IOVECS + 5))
    assert len(queue.peek()) == _framing.MAX_IOVECS
    assert len(queue) == _framing.MAX_IOVECS + 5


# ------------------------------------------------------------------ codec


def _roundTrip(obj: Any) -> Any:
    return _codec.loads([bytes(p) for p in _codec.dumps(obj)])


def test_plain_objects_use_plain_pickle() -> None:
    parts = _codec.dumps({"a": [1, 2.5, "x"], "b": (None, True)})
    assert b"cloudpickle" not in bytes(parts[0])
    assert _roundTrip({"a": [1, 2.5, "x"], "b": (None, True)}) == {
        "a": [1, 2.5, "x"],
        "b": (None, True),
    }


def test_lambdas_and_closures_go_by_value() -> None:
    k = 7

    def closure(x: int) -> int:
        return x + k

    assert _roundTrip(lambda x: x * 3)(2) == 6
    assert _roundTrip(closure)(1) == 8


def test_main_module_functions_go_by_value() -> None:
    def f(x: int) -> int:
        return x - 1

    f.__module__ = "__main__"
    f.__qualname__ = "f"
    parts = _codec.dumps(f)
    assert b"cloudpickle" in bytes(parts[0])


def test_calls_of_plain_values_pickle_whole_and_main_functions_still_by_value() -> None:
    # A module's function of plain values: one part, back as it was.
    parts = _codec.dumpsCall(divmod, (7, 2), {})
    assert len(parts) == 1 and type(parts[0]) is bytes
    assert _codec.loads(parts) == (divmod, (7, 2), {})
    long = "x" * _framing.BYTES_MIN
    assert _codec.loads(_codec.dumpsCall(struct.pack, (long,), {}))[1] == (long,)

    def f(x: int) -> int:
        return x - 1

    local = _codec.dumpsCall(f, (1,), {})  # (a local function: by value)
    assert b"cloudpickle" in bytes(local[0]) and _codec.loads(local)[0](1) == 0
    f.__module__ = "__main__"
    f.__qualname__ = "f"
    parts = _codec.dumpsCall(f, (1, 2.5, "s", None, True), {})
    assert b"cloudpickle" in bytes(parts[0])
    g, args, kw = _codec.loads(parts)
    assert g(3) == 2 and args == (1, 2.5, "s", None, True) and kw == {}


def test_plain_calls_of_module_functions_go_by_name() -> None:
    part = _codec.dumpsCallByName(divmod, (7, 2), {})
    assert type(part) is bytes and part[1 : 1 + part[0]] == b"builtins\0divmod"
    assert _codec.loadsCallByName(part) == (divmod, (7, 2))
    assert _codec.loadsCallByName(memoryview(part)) == (divmod, (7, 2))
    assert _codec.loadsCallByName(_codec.dumpsCallByName(struct.calcsize, (), {})) == (
        struct.calcsize,
        (),
    )
    plain = (1, 2.5, "s", None, True, 3j)
    assert _codec.loadsCallByName(_codec.dumpsCallByName(max, plain, {}))[1] == plain


plainValues = st.one_of(
    st.integers(),
    st.floats(allow_nan=False),
    st.complex_numbers(allow_nan=False),
    st.text(max_size=40),
    st.booleans(),
    st.none(),
)


@settings(max_examples=200)
@given(st.lists(plainValues, max_size=8))
def test_any_plain_arguments_come_back_as_they_were(args: list[Any]) -> None:
    part = _codec.dumpsCallByName(max, tuple(args), {})
    assert part is not None
    f, back = _codec.loadsCallByName(memoryview(bytearray(part)))
    assert f is max and back == tuple(args)
    assert [type(a) for a in back] == [type(a) for a in args]


def test_calls_that_cannot_go_by_name() -> None:
    def local(x: int) -> int:
        return x

    main = _fresh(local, "__main__", "main")

    class Callable:
        def __call__(self) -> None:
            pass

    long = "x" * _framing.BYTES_MIN
    for f, args, kw in [
        (divmod, (7, 2), {"k": 1}),  # keywords
        (local, (1,), {}),  # a local function
        (lambda: None, (), {}),
        (main, (), {}),  # a function of __main__
        (_codec._Pickler.reducer_override, (), {}),  # a method (a dotted name)
        (Callable(), (), {}),  # not a function
        (divmod, ([1], 2), {}),  # not plain values
        (struct.pack, (long,), {}),  # a large string: a part of its own
        (_fresh(local, __name__, "notInTheModule"), (), {}),  # not what its module holds
    ]:
        assert _codec.dumpsCallByName(f, args, kw) is None, f


def _fresh(f: Any, module: str, name: str) -> Any:
    """A copy of function *f* that claims to be *module*'s *name*."""
    import types

    copy = types.FunctionType(f.__code__, f.__globals__, name)
    copy.__module__, copy.__qualname__ = module, name
    return copy


def test_a_function_rebound_in_its_module_is_no_longer_sent_by_name(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import json

    original = json.dumps
    assert _codec.dumpsCallByName(original, (1,), {}) is not None  # (remembered now)
    monkeypatch.setattr(json, "dumps", _fresh(original, "json", "dumps"))
    assert _codec.dumpsCallByName(original, (1,), {}) is None
    # The receiver looks the name up for every call: the replacement now.
    part = _codec.dumpsCallByName(json.dumps, (1,), {})
    assert part is not None and _codec.loadsCallByName(part)[0] is json.dumps


def test_the_name_caches_are_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_codec, "BYNAME_CACHE", 2)
    monkeypatch.setattr(_codec, "_byName", {})
    monkeypatch.setattr(_codec, "_byHead", {})
    for f in (divmod, max, min, abs, pow):
        assert _codec.loadsCallByName(_codec.dumpsCallByName(f, (1, 1), {}))[0] is f
        assert len(_codec._byName) <= 2 and len(_codec._byHead) <= 2


def _named(module: str, name: str) -> bytes:
    """The part of a call of *module*'s *name* without arguments, sent by name."""
    head = f"{module}\0{name}".encode()
    return bytes([len(head)]) + head + pickle.dumps((), _codec.PROTOCOL)


def test_a_name_that_cannot_be_found_says_which() -> None:
    assert _codec.loadsCallByName(_named("json", "dumps")) == (__import__("json").dumps, ())
    with pytest.raises(ModuleNotFoundError, match="noSuchModule"):
        _codec.loadsCallByName(_named("noSuchModule", "f"))
    with pytest.raises(AttributeError, match="'json' has no attribute 'noSuchName'"):
        _codec.loadsCallByName(_named("json", "noSuchName"))


def test_a_name_the_module_gives_lazily_is_found(monkeypatch: pytest.MonkeyPatch) -> None:
    # The child's module may make the function only when it is asked for
    # (a module __getattr__), as unpickling a reference would ask.
    import types

    def make(name: str) -> Any:
        if name == "made":
            return divmod
        raise AttributeError(f"no {name} here")

    lazy = types.ModuleType("lazyFunctions")
    lazy.__getattr__ = make  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "lazyFunctions", lazy)
    assert "made" not in vars(lazy)
    assert _codec.loadsCallByName(_named("lazyFunctions", "made")) == (divmod, ())
    with pytest.raises(AttributeError, match="no unmade here"):
        _codec.loadsCallByName(_named("lazyFunctions", "unmade"))


def test_a_name_too_long_for_its_length_byte_goes_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    import types

    def f() -> int:
        return 1

    for size, byName in [(200, True), (300, False)]:
        module = types.ModuleType("m" * size)
        module.f = _fresh(f, module.__name__, "f")  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, module.__name__, module)
        part = _codec.dumpsCallByName(module.f, (), {})  # type: ignore[attr-defined]
        assert (part is not None) is byName
        if part is not None:
            assert _codec.loadsCallByName(part) == (module.f, ())  # type: ignore[attr-defined]


def test_out_of_band_buffers_are_separate_parts() -> None:
    data = bytearray(b"z" * 100_000)
    parts = _codec.dumps(pickle.PickleBuffer(data))
    assert len(parts) == 2 and memoryview(parts[1]).nbytes == 100_000
    assert bytes(_codec.loads(parts)) == bytes(data)


def test_unpicklable_argument_is_named() -> None:
    import threading

    lock = threading.Lock()
    with pytest.raises(pickle.PicklingError, match=r"argument 1 \(lock\)"):
        _codec.dumpsCall(max, (1, lock), {})
    with pytest.raises(pickle.PicklingError, match=r"keyword 'k'"):
        _codec.dumpsCall(max, (1,), {"k": lock})


def _refuse(*args: object) -> None:
    raise TypeError("this exception does not unpickle")


class _Stubborn(Exception):
    """An exception that pickles but does not unpickle."""

    def __init__(self, a: int, b: int) -> None:
        super().__init__(f"{a}/{b}")

    # Explicit, because args that do not match __init__ are not enough once
    # something (Dask's distributed, through tblib) has patched how
    # exceptions pickle, process-wide.
    def __reduce__(self) -> Any:
        return (_refuse, ())


def test_errors_travel_with_type_and_traceback() -> None:
    try:
        raise KeyError("nope")
    except KeyError as e:
        parts = _codec.dumpsError(e)
    error = _codec.loadsError(parts)
    assert isinstance(error.exception, KeyError)
    assert error.typeName == "KeyError"
    assert "raise KeyError" in error.traceback

    try:
        raise _Stubborn(1, 2)
    except _Stubborn as e:
        parts = _codec.dumpsError(e)
    error = _codec.loadsError(parts)
    assert error.exception is None
    assert error.typeName.endswith("_Stubborn")
    assert error.message == "1/2"
    assert "_Stubborn(1, 2)" in error.traceback


# ------------------------------------------------------------------ streams


def _gen(n: int, failAt: int | None = None) -> Any:
    for i in range(n):
        if i == failAt:
            raise ValueError(f"failed at {i}")
        yield i


def test_batches_know_whether_more_follow() -> None:
    table = IteratorTable()
    ID = table.add(_gen(5))
    assert table.batch(ID, 2) == ([0, 1], True, None)
    assert table.batch(ID, 2) == ([2, 3], True, None)
    assert table.batch(ID, 2) == ([4], False, None)
    assert len(table) == 0
    assert table.batch(ID, 2) == ([], False, None)


def test_batch_carries_the_error_after_the_good_items() -> None:
    table = IteratorTable()
    ID = table.add(_gen(10, failAt=3))
    items, more, error = table.batch(ID, 100)
    assert (items, more) == ([0, 1, 2], False)
    assert isinstance(error, ValueError)


def test_slow_iterator_batches_are_cut_short() -> None:
    import time

    def slow() -> Any:
        while True:
            time.sleep(0.004)
            yield 1

    table = IteratorTable()
    ID = table.add(slow())
    items, more, _ = table.batch(ID, 1000, maxSeconds=0.01)
    assert 1 <= len(items) < 10 and more
    table.close(ID)
    assert len(table) == 0


def test_is_iterator() -> None:
    assert isIterator(iter([1])) and isIterator(_gen(1)) and isIterator(map(abs, []))
    for obj in ([1], (1,), "ab", b"ab", {1: 2}, {1}, range(3), 5, None):
        assert not isIterator(obj)


# ------------------------------------------------------------------ child


class _ChildOverSocket:
    """A child interpreter driven by hand over a blocking socketpair."""

    def __init__(self, packageDir: str | None = None) -> None:
        """With *packageDir*, the lean modules of that directory are sent compiled first."""
        import os
        import socket

        self.sock, theirs = socket.socketpair()
        extra = ["code"] if packageDir else []
        self.proc = subprocess.Popen(
            [sys.executable, "-c", BOOTSTRAP, packageDir or PACKAGE_DIR,
             str(theirs.fileno()), str(os.getpid()), *extra],
            pass_fds=[theirs.fileno()],
        )  # fmt: skip
        theirs.close()
        if packageDir:
            self.sock.sendall(leanCode(PACKAGE_DIR))
        self.decoder = FrameDecoder()
        self.inbox: list[Any] = []
        self.send(_codec.INIT, [_codec.dumpsSmall({"path": sys.path})])
        assert self.receive().kind == _codec.HELLO

    def send(self, kind: int, parts: list[Any]) -> None:
        self.sock.sendall(encodeBytes(kind, parts))

    def receive(self) -> Any:
        while not self.inbox:
            data = self.sock.recv(1 << 20)
            assert data, "the child closed the socket"
            self.inbox.extend(self.decoder.feed(data))
        return self.inbox.pop(0)

    def call(self, *calls: tuple[Any, ...], byName: bool = False) -> list[tuple[str, Any, Any]]:
        """Run *calls* (``(f, *args)``; *byName*: sent so, `_codec.FLAG_BYNAME`)."""
        envelope, parts = [], []
        for i, (f, *args) in enumerate(calls):
            if byName:
                named = f if type(f) is bytes else _codec.dumpsCallByName(f, tuple(args), {})
                assert named is not None
                callParts, flags = [named], _codec.FLAG_BYNAME
            else:
                callParts, flags = _codec.dumps((f, tuple(args), {})), 0
            envelope.append((i, len(callParts), flags))
            parts.extend(callParts)
        self.send(_codec.CALLS, [_codec.dumpsSmall(envelope), *parts])
        out = []
        while len(out) < len(calls):
            message = self.receive()
            if message.kind != _codec.RESULTS:
                continue
            entries, _ = pickle.loads(message.parts[0])
            pos = 1
            for _taskID, status, n, _dt, extra in entries:
                payload = message.parts[pos : pos + n]
                pos += n
                value = _codec.loads(payload) if status == "r" else payload
                out.append((status, value, extra))
        return out

    def close(self) -> int:
        self.sock.close()
        return self.proc.wait(timeout=10)


# By value (a lambda), so the child does not import this test module.
_modules = lambda: sorted(  # noqa: E731
    m for m in __import__("sys").modules if m.startswith(("twisted", "zope", "asynqueue"))
)


def test_child_speaks_the_protocol_and_imports_no_twisted() -> None:
    child = _ChildOverSocket()
    try:
        results = child.call((pow, 2, 8), (_modules,), (len, "abc"))
        assert results[0] == ("r", 256, None)
        assert results[2] == ("r", 3, None)
        # The letter itself: a pickled Status would name its class in every entry.
        assert type(results[0][0]) is str
        modules = results[1][1]
        assert not [m for m in modules if m.startswith(("twisted", "zope"))], modules
        assert "asynqueue" not in modules  # the package __init__ never ran

        [(status, _, iterID)] = child.call((_gen, 5))
        assert status == "i"
        items = child.receive()
        assert items.kind == _codec.ITEMS
        ID, nItems, more, nError = pickle.loads(items.parts[0])
        assert (ID, more, nError) == (iterID, False, 0)
        assert _codec.loads(items.parts[1 : 1 + nItems]) == [0, 1, 2, 3, 4]
    finally:
        # End of file on its socket: the child exits by itself.
        assert child.close() == 0


def test_a_child_runs_calls_sent_by_name() -> None:
    child = _ChildOverSocket()
    try:
        results = child.call(
            (pow, 2, 8),
            (struct.calcsize, "ii"),
            (_named("noSuchModule", "f"),),
            (_named("json", "noSuchName"),),
            (len, "abc"),
            byName=True,
        )
        assert results[0] == ("r", 256, None)
        assert results[1] == ("r", 8, None)
        assert results[4] == ("r", 3, None)
        for (status, payload, _), missing in zip(
            results[2:4], ["noSuchModule", "noSuchName"], strict=True
        ):
            # That call fails, saying why; the others run.
            assert status == "e"
            error = _codec.loadsError(payload)
            assert "could not be unpickled in the child" in error.traceback
            assert missing in error.message
    finally:
        assert child.close() == 0


def test_a_child_runs_on_the_compiled_modules_its_parent_sends(tmp_path: Any) -> None:
    # Its package directory holds no sources: what runs came from the parent.
    child = _ChildOverSocket(packageDir=str(tmp_path))
    try:
        assert child.call((pow, 2, 10), (len, "abcd")) == [("r", 1024, None), ("r", 4, None)]
        [(status, _, extra)] = child.call((_modules,))
        assert status == "r" and extra is None
    finally:
        assert child.close() == 0


@settings(max_examples=20)
@given(st.integers(0, 100), st.text(max_size=5))
def test_process_base_data_is_per_object_and_per_process(n: int, key: str) -> None:
    a, b = ProcessBase(), ProcessBase()
    a.data["x"] = n
    assert a.x == n
    assert "x" not in b.data
    copy = pickle.loads(pickle.dumps(a))
    assert copy.data is a.data  # same object, same process
    with pytest.raises(AttributeError):
        _ = b.missing

"""The task status enum: the original's letters, as str, bytes or members."""

from __future__ import annotations

import pickle

from twisted.trial import unittest

from asynqueue._support._status import ERROR, ITERATOR, NONE, RESULT, Status, asStatus


class StatusTest(unittest.TestCase):
    def test_members_equal_the_original_letters(self) -> None:
        self.assertEqual(sorted(s.value for s in Status), sorted("rneictd"))
        self.assertEqual(Status.RESULT, "r")
        self.assertEqual({"e": 1}[Status.ERROR], 1)  # hashes as its letter

    def test_letters_bytes_and_members_map_to_the_member(self) -> None:
        for status in Status:
            self.assertIs(asStatus(status), status)
            self.assertIs(asStatus(status.value), status)
            self.assertIs(asStatus(status.value.encode()), status)

    def test_anything_else_is_no_status(self) -> None:
        for code in ("x", b"rr", "", None, 1, ["r"]):
            self.assertIsNone(asStatus(code))

    def test_a_member_survives_pickling(self) -> None:
        self.assertIs(pickle.loads(pickle.dumps(Status.ITERATOR)), Status.ITERATOR)

    def test_the_hot_path_constants_are_the_members(self) -> None:
        self.assertEqual(
            (RESULT, NONE, ERROR, ITERATOR),
            (Status.RESULT, Status.NONE, Status.ERROR, Status.ITERATOR),
        )
        for constant in (RESULT, NONE, ERROR, ITERATOR):
            self.assertIs(type(constant), Status)

"""`cores` and `cpuBudget`: the CPUs this process may use, a container's quota included."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from twisted.trial import unittest

from asynqueue._support import _system
from asynqueue._support._system import cores, cpuBudget


class CpuBudgetTest(unittest.TestCase):
    def setUp(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="cgroup-"))
        self.addCleanup(shutil.rmtree, self.root, ignore_errors=True)
        self.patch(_system, "cores", lambda: 4)

    def write(self, relative: str, text: str) -> None:
        path = self.root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)

    def budget(self) -> float:
        return cpuBudget(str(self.root))

    def test_no_cgroup_files_means_the_cores(self) -> None:
        self.assertEqual(self.budget(), 4.0)

    def test_version_2(self) -> None:
        for cpuMax, budget in [
            ("150000 100000", 1.5),  # a quota
            ("max 100000", 4.0),  # no quota
            ("800000 100000", 4.0),  # a quota above the cores leaves the cores
        ]:
            self.write("cpu.max", f"{cpuMax}\n")
            self.assertEqual(self.budget(), budget, cpuMax)

    def writeVersion1(self, folder: str, quota: str) -> None:
        self.write(f"{folder}/cpu.cfs_quota_us", f"{quota}\n")
        self.write(f"{folder}/cpu.cfs_period_us", "100000\n")

    def test_version_1_quota(self) -> None:
        self.writeVersion1("cpu,cpuacct", "50000")
        self.assertEqual(self.budget(), 0.5)

    def test_version_1_without_a_quota(self) -> None:
        self.writeVersion1("cpu", "-1")
        self.assertEqual(self.budget(), 4.0)

    def test_unreadable_values_are_no_quota(self) -> None:
        self.write("cpu.max", "garbage\n")
        self.writeVersion1("cpu", "soon")
        self.assertEqual(self.budget(), 4.0)

    def test_this_machine(self) -> None:
        # Whatever the machine, the budget is positive and at most its cores.
        self.patch(_system, "cores", cores)
        budget = cpuBudget()
        self.assertGreater(budget, 0)
        self.assertLessEqual(budget, len(os.sched_getaffinity(0)))

"""benchmarks/fault_injection.py runs as a command and its table tells pass from fail (the cases that need
no `mot` subprocess, so the check takes seconds; the full list runs in minutes and its output is
benchmarks/results/fault_injection.md)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.app.conftest import ROOT


@pytest.mark.slow
@pytest.mark.multiprocess
def test_fault_injection_script_runs_cases_and_writes_its_table(tmp_path):
    out = tmp_path / "table.md"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks/fault_injection.py"), "--cases", "9,11",
                           "--out", str(out), "--keep", str(tmp_path / "work")], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = [line for line in out.read_text().splitlines() if line.startswith("| 9 ") or line.startswith("| 11 ")]
    assert len(rows) == 2 and all(row.split("|")[-3].strip() == "pass" for row in rows), rows
    assert "propagated" in rows[0] and "repeats per document" in rows[1]

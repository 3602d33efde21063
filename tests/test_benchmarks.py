"""The benchmarks stay runnable: benchmarks/gpu_check.sh, the one script of every GPU figure, runs end to
end on the CPU at tiny sizes (--cpu-smoke) and prints its summary."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_gpu_check_runs_on_the_cpu_and_prints_its_summary():
    completed = subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--cpu-smoke"],
        capture_output=True,
        text=True,
        timeout=600,
        env={"PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin", "PYTHON": sys.executable},
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    summary = completed.stdout.split("== summary", 1)[1]
    for line in ("ratio gkp / plain (amp auto", "ratio gkp / plain (amp off", "step time", "latency ratio"):
        assert line in summary, line
    assert "paper-cifar evaluation" in summary and "PGD-3 training" in summary
    assert "(select + surgery on cpu)" in summary and "the same selection as on cpu: True" in summary

"""The benchmarks stay runnable: benchmarks/gpu_check.sh, the one script of every GPU figure, runs end to
end on the CPU at tiny sizes (--cpu-smoke) and prints its summary, and one failing step does not cost
the others' figures."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def gpu_check(python: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--cpu-smoke"],
        capture_output=True,
        text=True,
        timeout=600,
        env={"PATH": str(Path(sys.executable).parent) + ":/usr/bin:/bin", "PYTHON": python, **env},
    )


def test_the_gpu_check_runs_on_the_cpu_and_prints_its_summary():
    completed = gpu_check(sys.executable)
    assert completed.returncode == 0, completed.stderr[-2000:]
    summary = completed.stdout.split("== summary", 1)[1]
    for line in ("ratio gkp / plain (amp auto", "ratio gkp / plain (amp off", "step time", "latency ratio"):
        assert line in summary, line
    assert "paper-cifar evaluation" in summary and "PGD-3 training" in summary
    assert "ratio srgkp / dense through gkp.evaluate" in summary
    assert "(select + surgery on cpu)" in summary and "the same selection as on cpu: True" in summary


def test_a_failing_step_of_the_gpu_check_is_reported_and_the_rest_still_run(tmp_path):
    completed = gpu_check("false", OUT=str(tmp_path))  # every step's interpreter fails at once
    assert completed.returncode == 1
    summary = completed.stdout.split("== summary", 1)[1]
    for bench in ("bench_train", "bench_grouped", "bench_eval", "bench_api", "bench_srgkp", "bench_training_time"):
        assert f"FAILED: benchmarks/{bench}.py" in summary, bench
    assert (tmp_path / "gpu_check.log").read_text().count("FAILED") == 7  # the log is kept in $OUT

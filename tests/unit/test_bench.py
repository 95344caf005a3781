"""The benchmark runner: `tidegate bench` lists, `all` dispatches to each, the summary reads the ratios.

Nothing heavy runs here: dispatch is checked with ``--dry-run``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import bench.__main__ as runner
from tidegate.cli import main as cli_main

BENCH = Path(runner.__file__).parent
NAMES = sorted(p.stem[len("bench_"):] for p in BENCH.glob("bench_*.py"))


def test_tidegate_bench_lists_every_benchmark_and_all(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main(["bench"]) == 0
    listed = [line.split()[0] for line in capsys.readouterr().out.splitlines()]
    assert sorted(listed[:-1]) == NAMES and listed[-1] == "all"
    assert {"log", "pipeline", "footprint", "soak"} <= set(listed)


def test_the_runner_dispatches_to_every_benchmark(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert runner.main(["--dry-run", "--out", str(tmp_path)]) == 0
    lines = capsys.readouterr().out.splitlines()
    modules = [line.split()[2] for line in lines]
    assert sorted(modules) == sorted(f"bench.bench_{n}" for n in NAMES)
    assert modules[-1] == "bench.bench_soak"  # the long one last
    assert all(line.endswith(f"{tmp_path / m.split('_', 1)[1]}.md") for line, m in zip(lines, modules, strict=True))
    assert not any(tmp_path.iterdir())  # a dry run writes nothing


def test_tidegate_bench_all_goes_through_the_runner(capfd: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert cli_main(["bench", "all", "--dry-run", "--quick", "--only", "log,soak", "--out", str(tmp_path)]) == 0
    out = capfd.readouterr().out.splitlines()
    assert [line.split()[1:4] for line in out] == [["-m", "bench.bench_log", "--quick"], ["-m", "bench.bench_soak", "--quick"]]


def test_quick_skips_a_benchmark_without_a_quick_mode(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "bench_fast.py").write_text('"""Fast."""\nparser.add_argument("--quick")\n')
    (tmp_path / "bench_slow.py").write_text('"""Slow, with no smoke mode."""\n')
    found = runner.benchmarks(tmp_path)
    assert [(b.name, b.has_quick, b.summary) for b in found] == [("fast", True, "Fast."),
                                                                 ("slow", False, "Slow, with no smoke mode.")]
    monkeypatch.setattr(runner, "benchmarks", lambda: found)
    assert runner.main(["--dry-run", "--quick"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"{sys.executable} -m bench.bench_fast --quick >")
    assert out[1] == "# slow: skipped, it has no --quick"


def test_an_unknown_name_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert runner.main(["--only", "nosuch", "--dry-run"]) == 2
    assert "no benchmark nosuch" in capsys.readouterr().err


OUTPUT = """\
machine: x86_64

| sync policy | raw rec/s | log rec/s | log / raw | syncs |
|---|---|---|---|---|
| always | 6,051 | 5,229 | 0.86 | 26,369 |
| interval | 2,045,894 | 677,083 | 0.33 | 246 |

| readings/s | arrived / published | p99 ms |
|---|---|---|
| 10 | 150 / 150 | 351 |
"""


def test_the_summary_takes_ratio_columns_from_tables() -> None:
    assert runner.headlines(OUTPUT) == ["always: log / raw 0.86", "interval: log / raw 0.33"]
    assert runner.headlines(OUTPUT, max_rows=1) == ["always: log / raw 0.86", "(1 more rows in the output)"]


def test_headline_lines_win_over_tables() -> None:
    assert runner.headlines(OUTPUT + "headline: p99 at 100/s 0.9 s (goal 1 s)\n") == ["p99 at 100/s 0.9 s (goal 1 s)"]
    assert runner.headlines("no tables here\n") == []

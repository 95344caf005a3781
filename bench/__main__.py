"""Every benchmark in bench/, one after another, and a summary of their headline ratios.

Run: python -m bench [--quick] [--only log,pipeline] [--skip soak] [--out DIR] [--dry-run]

Each ``bench/bench_*.py`` runs as ``python -m bench.bench_NAME`` (with
``--quick`` passed through for a smoke run) in its own process. Its standard
output (the markdown tables) goes to ``DIR/NAME.md``, its standard error to
``DIR/NAME.log``, and ``DIR/summary.md`` collects the headline of each: the
lines a benchmark prints that start with ``headline:``, or, for one that
prints none, the ratio columns of its tables (headers with `` / `` or
``ratio`` in them). ``--dry-run`` prints the commands and runs nothing.

The default ``DIR`` is ``bench/results/<UTC time>/`` (not tracked by git).
A benchmark that fails does not stop the others; the exit status is 1 if any
failed.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent

# Cheap and self-contained first; any other bench_*.py found runs after these,
# in name order; the long soak last.
ORDER = ("log", "batching", "intake", "uplink", "throughput", "pipeline", "footprint")
LAST = ("soak",)

_RATIO_HEADER = re.compile(r"(?<!arrived) / (?!published)|ratio|as good", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class Benchmark:
    name: str
    path: Path

    @property
    def summary(self) -> str:
        """The first line of the module's docstring."""
        text = self.path.read_text(encoding="utf-8")
        return text.split('"""')[1].strip().splitlines()[0] if text.count('"""') >= 2 else ""

    @property
    def has_quick(self) -> bool:
        return '"--quick"' in self.path.read_text(encoding="utf-8")

    def command(self, quick: bool) -> list[str]:
        return [sys.executable, "-m", f"bench.bench_{self.name}", *(["--quick"] if quick else [])]


def benchmarks(folder: Path = BENCH) -> list[Benchmark]:
    """The ``bench_*.py`` in ``folder``, in running order."""
    found = {p.stem[len("bench_"):]: p for p in folder.glob("bench_*.py")}
    names = [n for n in ORDER if n in found] + sorted(n for n in found if n not in ORDER + LAST)
    names += [n for n in LAST if n in found]
    return [Benchmark(n, found[n]) for n in names]


def markdown_tables(text: str) -> list[tuple[list[str], list[list[str]]]]:
    """The markdown tables in ``text`` as (headers, rows)."""
    tables: list[tuple[list[str], list[list[str]]]] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines) - 1:
        if lines[i].startswith("|") and re.fullmatch(r"\|(\s*:?-+:?\s*\|)+", lines[i + 1].strip()):
            headers = [c.strip() for c in lines[i].strip().strip("|").split("|")]
            rows = []
            i += 2
            while i < len(lines) and lines[i].startswith("|"):
                rows.append([c.strip() for c in lines[i].strip().strip("|").split("|")])
                i += 1
            tables.append((headers, rows))
        else:
            i += 1
    return tables


def headlines(output: str, max_rows: int = 8) -> list[str]:
    """What the summary says about one benchmark's output.

    The lines starting with ``headline:`` if there are any; otherwise one line
    per table row giving its first cell and its ratio columns (tables of more
    than ``max_rows`` rows give their first ``max_rows``).
    """
    lines = [line.split(":", 1)[1].strip() for line in output.splitlines() if line.startswith("headline:")]
    if lines:
        return lines
    for headers, rows in markdown_tables(output):
        ratios = [i for i, h in enumerate(headers) if i > 0 and _RATIO_HEADER.search(h)]
        if not ratios:
            continue
        for row in rows[:max_rows]:
            cells = ", ".join(f"{headers[i]} {row[i]}" for i in ratios if i < len(row))
            lines.append(f"{row[0]}: {cells}")
        if len(rows) > max_rows:
            lines.append(f"({len(rows) - max_rows} more rows in the output)")
    return lines


def _load() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "unknown"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="pass --quick to each benchmark (a smoke run)")
    parser.add_argument("--only", default="", help="comma-separated names to run (default: all)")
    parser.add_argument("--skip", default="", help="comma-separated names not to run")
    parser.add_argument("--out", type=Path, default=None, help="where outputs go (default bench/results/<time>)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    parser.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    args = parser.parse_args(argv)

    every = benchmarks()
    if args.list:
        for b in every:
            print(f"{b.name:<12} {b.summary}")
        return 0
    only = {n for n in args.only.split(",") if n}
    skip = {n for n in args.skip.split(",") if n}
    unknown = (only | skip) - {b.name for b in every}
    if unknown:
        print(f"python -m bench: no benchmark {', '.join(sorted(unknown))}; there are: "
              f"{', '.join(b.name for b in every)}", file=sys.stderr)
        return 2
    chosen = [b for b in every if (not only or b.name in only) and b.name not in skip]
    out = args.out or BENCH / "results" / dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")

    if args.dry_run:
        for b in chosen:
            if args.quick and not b.has_quick:
                print(f"# {b.name}: skipped, it has no --quick")
                continue
            print(f"{' '.join(b.command(args.quick))} > {out / (b.name + '.md')}")
        return 0

    out.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH", "")])))
    summary = [f"# Benchmarks, {dt.datetime.now(dt.timezone.utc):%Y-%m-%d %H:%M} UTC"
               f"{' (--quick)' if args.quick else ''}", ""]
    failed = []
    for n, b in enumerate(chosen, 1):
        if args.quick and not b.has_quick:
            summary += [f"## {b.name}: skipped (no --quick)", ""]
            print(f"[{n}/{len(chosen)}] {b.name}: skipped, it has no --quick", flush=True)
            continue
        print(f"[{n}/{len(chosen)}] {b.name}: {' '.join(b.command(args.quick)[1:])} (load {_load()})", flush=True)
        start = time.monotonic()
        with open(out / f"{b.name}.md", "wb") as stdout, open(out / f"{b.name}.log", "wb") as stderr:
            rc = subprocess.run(b.command(args.quick), cwd=ROOT, env=env, stdout=stdout, stderr=stderr,
                                check=False).returncode
        took = time.monotonic() - start
        status = "ok" if rc == 0 else f"FAILED (exit {rc}, see {b.name}.log)"
        print(f"    {status} in {took:.0f} s", flush=True)
        if rc != 0:
            failed.append(b.name)
        summary += [f"## {b.name}: {status}, {took:.0f} s", ""]
        summary += [f"- {line}" for line in headlines((out / f"{b.name}.md").read_text(errors="replace"))] or ["- (no ratios found)"]
        summary.append("")
    (out / "summary.md").write_text("\n".join(summary))
    print("\n" + "\n".join(summary))
    print(f"outputs in {out}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

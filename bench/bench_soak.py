"""Memory of the gateway over time at a steady rate (a soak).

Run: python -m bench.bench_soak [--minutes 3] [--rate 1000] [--long | --quick]

The gateway (``tidegate run``, its own process, spool upstream) ingests a
simulated fleet at ``--rate`` readings/s; its resident memory (VmRSS) and CPU
time are sampled every second. ``--long`` is the 30-minute soak, ``--quick``
a 30-second smoke run. Writes ``docs/bench/soak.json`` (a ``--quick`` run only
with ``--out``); ``python -m bench.plots`` draws it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.bench_pipeline import proc_stats, simulate
from bench.common import ROOT, machine
from edge.mosquitto import Mosquitto


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--long", action="store_true", help="30 minutes")
    parser.add_argument("--quick", action="store_true", help="30 seconds; docs/bench/soak.json left alone")
    parser.add_argument("--out", type=Path, default=None, help="default docs/bench/soak.json")
    args = parser.parse_args(argv)
    seconds = 1800.0 if args.long else 30.0 if args.quick else args.minutes * 60
    if args.out is None and not args.quick:
        args.out = ROOT / "docs" / "bench" / "soak.json"
    samples: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory() as tmp, Mosquitto(Path(tmp) / "mq") as mq:
        gateway = subprocess.Popen(
            [sys.executable, "-m", "tidegate", "run", "--mqtt", f"127.0.0.1:{mq.port}", "--quiet", "--no-http",
             "--data-dir", str(Path(tmp) / "gw")],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        try:
            time.sleep(3)
            sim = simulate(mq.port, args.rate, seconds)
            start = time.monotonic()
            while sim.poll() is None:
                rss, cpu = proc_stats(gateway.pid)
                samples.append({"t": round(time.monotonic() - start, 1), "rss_mb": rss / 2**20, "cpu_s": cpu})
                time.sleep(1.0)
        finally:
            gateway.terminate()
            gateway.wait(30)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"machine": machine(), "rate": args.rate, "samples": samples}, indent=0))
    rss = [s["rss_mb"] for s in samples]
    cpu = samples[-1]["cpu_s"] - samples[0]["cpu_s"]
    print(f"{len(samples)} samples at {args.rate:.0f} readings/s: RSS start {rss[0]:.1f} MB, "
          f"max {max(rss):.1f} MB, end {rss[-1]:.1f} MB; CPU {cpu:.1f} s")
    print(f"headline: RSS max {max(rss):.1f} MB over {seconds / 60:.1f} min at {args.rate:.0f} readings/s "
          f"(60 MB goal: {max(rss) / 60:.2f} of it); CPU {cpu / max(samples[-1]['t'], 1) * 100:.0f} % of one core")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Plots for docs/benchmarks.md (matplotlib, PNG into docs/bench/).

Run: python -m bench.plots

* ``latency_vs_rate.png``: p50 and p99 from publish to the readings topic
  against the rate, for tidegate (with the central expander; its p99 to the
  batch topic beside it) and the bare forwarder (from docs/bench/pipeline.json,
  written by ``python -m bench.bench_pipeline --json docs/bench/pipeline.json``);
* ``bytes_vs_batch_size.png``: batch bytes per reading against readings per
  batch, computed here with the real encoder on the synthetic fleet and the
  NAB machine-temperature series, beside one JSON message per reading;
* ``memory_over_time.png``: the gateway's resident memory during a soak (from
  docs/bench/soak.json, written by ``python -m bench.bench_soak``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from bench.common import ROOT, fleet_readings, nab_readings  # noqa: E402
from core.batch import Entry, encode_batch  # noqa: E402
from core.reading import Reading  # noqa: E402
from core.timewindow import window_of  # noqa: E402

OUT = ROOT / "docs" / "bench"
SIZES = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000]


def bytes_per_reading(readings: list[Reading], size: int, window_ms: int) -> float:
    total = count = 0
    run: list[Entry] = []
    window = None
    for offset, reading in enumerate(readings):
        w = window_of(reading.ts_ms, window_ms)
        if run and (w != window or len(run) >= size):
            total += len(encode_batch("gw-1", "sensors", window, run))
            count += len(run)
            run = []
        window = w
        run.append(Entry(offset, reading))
    return total / count


def plot_bytes(out: Path) -> None:
    fleet = fleet_readings(seconds=120)
    machine_temp = nab_readings("machine_temperature_system_failure", "machine-1")
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for name, readings, window_ms in (
        ("synthetic fleet (100 series, 1 Hz)", fleet, 3_600_000),
        ("NAB machine temperature (1 series, 5 min), 1-day windows", machine_temp, 86_400_000),
    ):
        sizes = [s for s in SIZES if s <= len(readings) // 4]
        ax.plot(sizes, [bytes_per_reading(readings, s, window_ms) for s in sizes], marker="o", label=name)
    json_bytes = sum(len(json.dumps({"ts": r.ts_ms, "value": r.value})) for r in fleet) / len(fleet)
    ax.axhline(json_bytes, color="grey", linestyle="--", label=f"one JSON payload per reading ({json_bytes:.0f} B, no MQTT framing)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("readings per batch")
    ax.set_ylabel("batch bytes per reading")
    ax.set_title("tidegate batch size and bytes per reading")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "bytes_vs_batch_size.png", dpi=110)
    plt.close(fig)


def plot_latency(out: Path) -> None:
    results = json.loads((out / "pipeline.json").read_text())
    rates = [r["rate"] for r in results]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(rates, [r["p50"] for r in results], marker="o", label="tidegate p50, to the readings topic")
    ax.plot(rates, [r["p99"] for r in results], marker="o", label="tidegate p99, to the readings topic")
    if all("batch_topic" in r for r in results):
        ax.plot(rates, [r["batch_topic"]["p99"] for r in results], marker="^", linestyle="--",
                label="tidegate p99, to the batch topic")
    ax.plot(rates, [r["bare"]["p50"] for r in results], marker="s", linestyle=":", label="bare forwarder p50")
    ax.plot(rates, [r["bare"]["p99"] for r in results], marker="s", linestyle=":", label="bare forwarder p99")
    ax.axhline(1000, color="red", alpha=0.4, label="1 s goal (p99 at 100 readings/s)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("readings/s published")
    ax.set_ylabel("from publish, ms")
    ax.set_title("End-to-end latency (2 cores shared by every process)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "latency_vs_rate.png", dpi=110)
    plt.close(fig)


def plot_memory(out: Path) -> None:
    soak = json.loads((out / "soak.json").read_text())
    samples = soak["samples"]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot([s["t"] / 60 for s in samples], [s["rss_mb"] for s in samples])
    ax.axhline(60, color="red", alpha=0.4, label="60 MB goal (Pi Zero 2 W)")
    ax.set_ylim(0, 80)
    ax.set_xlabel("minutes")
    ax.set_ylabel("gateway resident memory, MB")
    ax.set_title(f"Gateway memory at {soak['rate']:.0f} readings/s")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "memory_over_time.png", dpi=110)
    plt.close(fig)


def main() -> int:
    OUT.mkdir(parents=True, exist_ok=True)
    plot_bytes(OUT)
    for plot, source in ((plot_latency, "pipeline.json"), (plot_memory, "soak.json")):
        if (OUT / source).exists():
            plot(OUT)
        else:
            print(f"no {OUT / source}: skipped its plot", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Hypothesis: the log against a model under appends, syncs, reopens, crashes and retention; fuzzed bytes."""

from __future__ import annotations

import random

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from core.log import UNSYNCED, LogConfig
from core.log import format as fmt
from core.log._scan import FrameScanner
from tests.unit.log.conftest import T0, open_log
from tests.unit.log.memfs import MemFS

MINUTE = 60_000
CONFIG = LogConfig(window_ms=MINUTE, segment_bytes=64 * 1024, max_open_windows=3, late_grace_ms=MINUTE,
                   retention_ms=MINUTE)


class LogMachine(RuleBasedStateMachine):
    """The model: per stream, offset -> (ts, payload) of every record that may be in the log, and which must."""

    def __init__(self) -> None:
        super().__init__()
        self.fs = MemFS()
        self.log = open_log(self.fs, CONFIG)
        self.records: dict[str, dict[int, tuple[int, bytes]]] = {"a": {}, "b": {}}
        self.must: dict[str, int] = {"a": 0, "b": 0}  # records below this must be there (unless deleted)
        self.deleted: dict[str, set[int]] = {"a": set(), "b": set()}
        self.forwarded: dict[str, int] = {"a": 0, "b": 0}  # the bridge cursors stored
        self.clock = 0
        self.rng = random.Random(0)

    @rule(stream=st.sampled_from(["a", "b"]), minute=st.integers(0, 5), ms=st.integers(0, MINUTE - 1),
          payload=st.binary(max_size=200))
    def append(self, stream, minute, ms, payload) -> None:
        ts = T0 + minute * MINUTE + ms
        offset = self.log.append(stream, ts, payload, UNSYNCED)
        assert offset not in self.records[stream]
        assert offset >= max(self.records[stream], default=-1) + 1
        self.records[stream][offset] = (ts, payload)

    @rule()
    def sync(self) -> None:
        self.log.sync()
        for name in self.must:
            self.must[name] = self.log.durable_offset(name)

    @rule(step=st.integers(0, 50))
    def maybe_sync(self, step) -> None:
        self.clock += step
        self.log.maybe_sync(self.clock)
        for name in self.must:
            self.must[name] = self.log.durable_offset(name)

    @rule()
    def reopen(self) -> None:
        self.log.close()
        self.log = open_log(self.fs, CONFIG)
        for name in self.must:
            self.must[name] = self.log.durable_offset(name)

    @rule(seed=st.integers(0, 2**32))
    def power_cut(self, seed) -> None:
        self.fs = self.fs.crash(random.Random(seed))
        self.log = open_log(self.fs, CONFIG)
        for name, records in self.records.items():
            held = {r.offset for r in self.read_all(name)}
            for offset in list(records):
                if offset >= self.must[name] and offset not in held:
                    del records[offset]  # not acknowledged, lost: allowed
            self.must[name] = self.log.durable_offset(name)

    @precondition(lambda self: any(self.must.values()))
    @rule(stream=st.sampled_from(["a", "b"]), data=st.data())
    def retention(self, stream, data) -> None:
        self.forwarded[stream] = data.draw(st.integers(0, self.must[stream]))
        self.log.store_cursor("bridge", stream, self.forwarded[stream])
        before = {name: {r.offset for r in self.read_all(name)} for name in self.records}
        self.log.enforce_retention(T0 + 100 * MINUTE)
        for name in self.records:  # retention goes over every stream, by its stored cursor
            gone = before[name] - {r.offset for r in self.read_all(name)}
            assert all(offset < self.forwarded[name] for offset in gone)  # only forwarded data goes
            self.deleted[name] |= gone

    def read_all(self, stream: str) -> list:
        out, offset = [], 0
        while True:
            chunk = self.log.read(stream, offset, max_records=97)
            if not chunk:
                return out
            assert chunk[0].offset >= offset
            out.extend(chunk)
            offset = chunk[-1].offset + 1

    @invariant()
    def reads_match_the_model(self) -> None:
        for name, records in self.records.items():
            got = self.read_all(name)
            offsets = [r.offset for r in got]
            assert offsets == sorted(set(offsets))
            for r in got:
                assert records[r.offset] == (r.ts_ms, r.payload)
            expected = [o for o in sorted(records) if o < self.must[name] and o not in self.deleted[name]]
            assert [o for o in offsets if o < self.must[name]] == expected
            assert self.log.end_offset(name) >= self.must[name]

    @invariant()
    def time_reads_match_the_model(self) -> None:
        t1, t2 = T0 + MINUTE + 1234, T0 + 4 * MINUTE
        got = list(self.log.read_time_range("a", t1, t2))
        durable = self.log.durable_offset("a")
        want = sorted(
            (o for o, (ts, _) in self.records["a"].items()
             if t1 <= ts < t2 and o < durable and o not in self.deleted["a"]),
            key=lambda o: (self.records["a"][o][0] // MINUTE, o),
        )
        assert [r.offset for r in got if r.offset < self.must["a"]] == [o for o in want if o < self.must["a"]]

    def teardown(self) -> None:
        self.log.close()


TestLogMachine = LogMachine.TestCase
TestLogMachine.settings = settings(max_examples=60, stateful_step_count=40, deadline=None,
                                   suppress_health_check=[HealthCheck.too_slow])


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000), st.data())
def test_scanner_on_arbitrary_bytes_yields_only_checked_frames_and_never_raises(data, draw) -> None:
    frame = fmt.encode_frame(fmt.TYPE_BATCH, fmt.encode_batch(0, [1], [b"x"]))
    cut = draw.draw(st.integers(0, len(data)))
    blob = data[:cut] + frame + data[cut:]
    damage: list = []
    scanner = FrameScanner(lambda p, n: blob[p:p + n], "f", 0, len(blob), damage.append)
    frames = list(scanner)
    for position, frame_type, body in frames:
        assert blob[position:position + 4] == fmt.FRAME_MAGIC
    assert (cut, fmt.TYPE_BATCH, frame[13:]) in frames or any(p < cut + len(frame) for p, _, _ in frames)
    covered = sum(d.dropped_bytes for d in damage) + sum(13 + len(b) for _, _, b in frames)
    assert covered + (scanner.tail.dropped_bytes if scanner.tail else 0) == len(blob)


@settings(max_examples=150, deadline=None)
@given(st.binary(min_size=1, max_size=3000))
def test_opening_a_log_whose_segment_is_garbage_reports_and_never_raises(garbage) -> None:
    path = "streams/s/00000001704067200000-03600000/00000000000000000000.log"
    fs = MemFS.from_files({path: garbage})
    damage: list = []
    log = open_log(fs, damage=damage)
    assert log.read("s", 0) == [] or all(r.stream == "s" for r in log.read("s", 0))
    assert log.append("s", T0, b"x", T0) >= 0

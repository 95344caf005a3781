"""Ring buffer cases: order, drop-oldest, persistence in a file, torn writes and damage."""

import scratch
from tidegate_node.ring import FileStore, RamStore, Ring, RingError


class Lcg:
    """A tiny deterministic PRNG: the same sequence on both VMs."""

    def __init__(self, seed):
        self.state = seed

    def next(self, n):
        self.state = (self.state * 1103515245 + 12345) & 0x7FFFFFFF
        return self.state % n


def _record(i, size):
    body = ("r" + str(i) + ":").encode()
    return (body + bytes((i & 0xFF,)) * size)[: max(size, len(body))]


def _fresh(name, size):
    try:
        import os

        os.remove(scratch.path(name))
    except OSError:
        pass
    return FileStore(scratch.path(name), size)


def case_fifo_with_drops_in_ram_and_file():
    results = []
    for store in (RamStore(1024), _fresh("fifo.ring", 1024)):
        rng = Lcg(7)
        ring = Ring(store)
        appended = []
        popped = 0
        trace = []
        for step in range(400):
            if rng.next(3):
                record = _record(step, 1 + rng.next(120))
                ring.append(record)
                appended.append(record)
            else:
                k = rng.next(4)
                got = ring.peek(k)
                ring.pop(k)
                popped += len(got)
                trace.append(len(got))
            # What is left is always the newest appended records not yet popped, in order.
            live = ring.peek(len(ring))
            assert len(live) == len(ring)
            if live:
                start = appended.index(live[0])
                assert appended[start : start + len(live)] == live, step
                assert start + len(live) == len(appended), step
        results.append([len(appended), popped, ring.dropped, len(ring), ring.head, ring.tail, trace[:20]])
        ring.close()
    return results


def case_full_ring_drops_oldest_and_counts():
    ring = Ring(RamStore(64 + 100))  # 100 bytes of data: four 21-byte records
    for i in range(6):
        ring.append(bytes((i,)) * 21)
    return [len(ring), ring.dropped, [r[0] for r in ring.peek(10)]]


def case_file_ring_survives_reopen():
    ring = Ring(_fresh("persist.ring", 2048))
    for i in range(5):
        ring.append(_record(i, 30))
    ring.close()
    again = Ring(FileStore(scratch.path("persist.ring"), 2048))
    first = again.peek(10)
    again.pop(2)
    again.append(_record(5, 30))
    again.close()
    third = Ring(FileStore(scratch.path("persist.ring"), 2048))
    out = [first == [_record(i, 30) for i in range(5)], third.peek(10) == [_record(i, 30) for i in (2, 3, 4, 5)],
           third.generation, third.lost]
    third.close()
    return out


def case_torn_header_write_falls_back_to_the_previous_state():
    ring = Ring(_fresh("torn.ring", 1024))
    for i in range(3):
        ring.append(_record(i, 10))
    generation = ring.generation
    ring.close()
    # Tear the newest header slot: as if power failed while writing it.
    f = open(scratch.path("torn.ring"), "r+b")
    f.seek((generation & 1) * 32 + 8)
    f.write(b"\xff\xff")
    f.close()
    again = Ring(FileStore(scratch.path("torn.ring"), 1024))
    out = [again.peek(10) == [_record(i, 10) for i in range(2)], again.generation, again.lost]
    again.close()
    return out


def case_damaged_record_cuts_the_ring_and_is_reported():
    ring = Ring(_fresh("damaged.ring", 1024))
    for i in range(5):
        ring.append(_record(i, 10))
    ring.close()
    f = open(scratch.path("damaged.ring"), "r+b")
    f.seek(64 + 2 * (4 + 10) + 6)  # inside the third record's payload
    f.write(b"X")
    f.close()
    reports = []
    again = Ring(FileStore(scratch.path("damaged.ring"), 1024), report=lambda reason, n: reports.append([reason, n]))
    out = [again.peek(10) == [_record(0, 10), _record(1, 10)], again.lost, again.dropped, reports]
    again.append(_record(9, 10))
    out.append(again.peek(10)[-1] == _record(9, 10))
    again.close()
    return out


def case_misuse_is_refused():
    ring = Ring(RamStore(256))
    out = []
    for payload in (b"", bytes(200)):
        try:
            ring.append(payload)
            out.append("accepted")
        except RingError:
            out.append("RingError")
    try:
        Ring(RamStore(100))
        out.append("accepted")
    except RingError:
        out.append("RingError")
    ring.pop(5)  # popping an empty ring is a no-op
    return out + [len(ring), ring.peek(3)]


def case_a_file_of_another_size_starts_afresh():
    ring = Ring(_fresh("resize.ring", 1024))
    ring.append(b"old")
    ring.close()
    bigger = Ring(FileStore(scratch.path("resize.ring"), 2048))
    out = [len(bigger), bigger.capacity]
    bigger.close()
    return out

"""The offline ring buffer: packed samples wait here until the link takes them, oldest first.

Theory of operation
-------------------
Every sample goes into the ring first and leaves it only when the transport
has delivered it (MQTT: PUBACK received; UART: written), so a Wi-Fi outage,
a broker restart or a node that only connects every tenth wake-up loses
nothing until the ring is full. When it is full, the *oldest* samples are
dropped to make room and counted in :attr:`Ring.dropped`: a long outage
keeps the most recent history, and the count says what was lost.

Storage is a fixed-size area allocated once, either a ``bytearray`` in RAM
(:class:`RamStore`: fast, lost on reset and deep sleep) or a preallocated
file in flash (:class:`FileStore`: survives deep sleep and power loss).
Layout of the area::

    offset 0    header slot A   32 bytes
    offset 32   header slot B   32 bytes
    offset 64   data            records, back to back, wrapping at the end

    header  := magic "TGR1" | generation u32 | capacity u32 | head u32 |
               tail u32 | count u32 | dropped u32 | reserved u16 (0) | crc u16
    record  := length u16 | crc u16 | payload (length bytes, 1..65534)
    wrap    := length 0x0000 (the rest of the data area is unused)

All integers are big-endian; CRCs are CRC-16/CCITT-FALSE
(core/serial_frame.py), of the header's first 30 bytes and of the payload.
``head`` and ``tail`` are offsets into the data area: the oldest record, and
where the next one goes. A record never straddles the end: if it does not
fit before the end, a wrap marker (or fewer than 4 spare bytes) sends it to
offset 0.

Crash safety (for the file store): a record is written first, then the
header, alternating between slots A and B with a rising generation, then
the file is flushed. On open the valid slot with the higher generation wins;
a torn header write leaves the other slot intact, so the ring comes back as
it was before the last append or pop. :meth:`Ring.recover` then walks the
records from ``head`` and checks each CRC; a bad record (a flash bit error,
a FAT file system torn mid-write) ends the ring there, and the lost records
are reported. A torn record write is never seen at all: the header still
points before it.

Cost: an append writes the record and one 32-byte header; on a file, one
flush. littlefs (the ESP32 and Pico W default) writes that as one block
program, spread over the flash by its wear levelling.
"""

import struct

from tidegate_node._compat import const, load_serial_frame
from tidegate_node.errors import RingError

__all__ = ["RamStore", "FileStore", "Ring", "RingError", "HEADER_BYTES"]

_crc16 = load_serial_frame().crc16

_MAGIC = b"TGR1"
_SLOT = const(32)
HEADER_BYTES = const(64)  # two slots
_RECORD_HEAD = const(4)
_MAX_RECORD = const(65534)
_HEADER_FORMAT = ">4sIIIIIIH"  # 30 bytes, then the CRC


class RamStore:
    """The ring's area in RAM: one ``bytearray`` of ``size`` bytes, allocated now."""

    def __init__(self, size):
        self.size = size
        self._buf = bytearray(size)
        self._mv = memoryview(self._buf)

    def readinto(self, offset, buf):
        buf[:] = self._mv[offset : offset + len(buf)]

    def write(self, offset, data):
        self._mv[offset : offset + len(data)] = data

    def sync(self):
        pass

    def close(self):
        pass


class FileStore:
    """The ring's area in a file of exactly ``size`` bytes, created (zero-filled) if missing.

    The file stays open for the store's lifetime; :meth:`close` closes it.
    """

    def __init__(self, path, size):
        self.size = size
        self.path = path
        try:
            f = open(path, "r+b")
            f.seek(0, 2)
            if f.tell() != size:  # another size: start afresh
                f.close()
                f = None
        except OSError:
            f = None
        if f is None:
            f = open(path, "w+b")
            zeros = bytes(512)
            left = size
            while left > 0:
                f.write(zeros[: min(512, left)])
                left -= 512
            f.flush()
        self._f = f

    def readinto(self, offset, buf):
        self._f.seek(offset)
        n = self._f.readinto(buf)
        if n != len(buf):
            raise OSError("short read from " + self.path)

    def write(self, offset, data):
        self._f.seek(offset)
        self._f.write(data)

    def sync(self):
        self._f.flush()

    def close(self):
        self._f.close()


class Ring:
    """A FIFO of byte records in a fixed-size store.

    Args:
        store: a :class:`RamStore` or :class:`FileStore` of at least 128
            bytes; the ring owns it from now on (and closes it in
            :meth:`close`).
        report: optional ``report(reason, records)`` callback, called when
            :meth:`recover` finds damage.

    The ring resumes whatever a valid header in the store describes (a
    zero-filled store is an empty ring), then checks every record
    (:meth:`recover`); :attr:`lost` is what that check cut off.
    """

    def __init__(self, store, report=None):
        if store.size < HEADER_BYTES + 64:
            raise RingError("ring store of " + str(store.size) + " bytes is too small")
        self._store = store
        self._report = report
        self.capacity = store.size - HEADER_BYTES
        self._hdr = bytearray(_SLOT)
        self._rec = bytearray(_RECORD_HEAD)
        self.generation = 0
        self.head = 0
        self.tail = 0
        self.count = 0
        self.dropped = 0
        self._load_header()
        self.lost = self.recover()

    # -- header ---------------------------------------------------------

    def _read_slot(self, index):
        self._store.readinto(index * _SLOT, self._hdr)
        h = self._hdr
        if bytes(h[0:4]) != _MAGIC or _crc16(memoryview(h)[:30]) != (h[30] << 8 | h[31]):
            return None
        fields = struct.unpack_from(_HEADER_FORMAT, h, 0)
        if fields[2] != self.capacity:
            return None
        return fields

    def _load_header(self):
        best = None
        for index in (0, 1):
            fields = self._read_slot(index)
            if fields is not None and (best is None or fields[1] > best[1]):
                best = fields
        if best is None:
            return  # a fresh (or foreign) store: an empty ring
        _, self.generation, _, head, tail, count, self.dropped, _ = best
        if head < self.capacity and tail <= self.capacity:
            self.head, self.tail, self.count = head, tail, count

    def _write_header(self):
        self.generation += 1
        h = self._hdr
        struct.pack_into(_HEADER_FORMAT, h, 0, _MAGIC, self.generation, self.capacity,
                         self.head, self.tail, self.count, self.dropped, 0)
        crc = _crc16(memoryview(h)[:30])
        h[30] = crc >> 8
        h[31] = crc & 0xFF
        self._store.write((self.generation & 1) * _SLOT, h)
        self._store.sync()

    # -- records --------------------------------------------------------

    def _read_head(self, pos):
        """(position, length) of the record at ``pos``, following a wrap; length 0 if none."""
        if self.capacity - pos < _RECORD_HEAD:
            pos = 0
        self._store.readinto(HEADER_BYTES + pos, self._rec)
        length = self._rec[0] << 8 | self._rec[1]
        if length == 0 and pos != 0:  # wrap marker
            pos = 0
            self._store.readinto(HEADER_BYTES, self._rec)
            length = self._rec[0] << 8 | self._rec[1]
        return pos, length

    def _skip(self, pos):
        """The position after the record at ``pos``, or -1 if its length is impossible."""
        pos, length = self._read_head(pos)
        if length == 0 or pos + _RECORD_HEAD + length > self.capacity:
            return -1
        return pos + _RECORD_HEAD + length

    def _read_record(self, pos):
        """(payload, position after it) of the record at ``pos``; payload None if damaged."""
        pos, length = self._read_head(pos)
        crc = self._rec[2] << 8 | self._rec[3]
        if length == 0 or pos + _RECORD_HEAD + length > self.capacity:
            return None, pos
        payload = bytearray(length)
        self._store.readinto(HEADER_BYTES + pos + _RECORD_HEAD, payload)
        if _crc16(payload) != crc:
            return None, pos
        return payload, pos + _RECORD_HEAD + length

    def recover(self):
        """Check every record from the head; cut the ring at the first damaged one.

        Returns:
            How many records were lost (0 for an intact ring). The loss is
            also reported through ``report("corrupt_record", n)`` and added
            to :attr:`dropped`.
        """
        pos = self.head
        good = 0
        while good < self.count:
            payload, after = self._read_record(pos)
            if payload is None:
                break
            good += 1
            pos = after
        lost = self.count - good
        if lost:
            self.count = good
            self.tail = pos if good else self.head
            self.dropped += lost
            self._write_header()
            if self._report is not None:
                self._report("corrupt_record", lost)
        return lost

    def __len__(self):
        return self.count

    def _place(self, need):
        """Where a record of ``need`` bytes goes without overwriting live data, or -1."""
        if self.count == 0:
            return 0
        head, tail = self.head, self.tail
        if tail > head:  # live data is [head, tail): free space at the end, then before head
            if self.capacity - tail >= need:
                return tail
            return 0 if head >= need else -1
        # The live records wrap (tail <= head): free space is [tail, head).
        return tail if head - tail >= need else -1

    def append(self, payload):
        """Add a record at the tail, dropping the oldest records if there is no room.

        Raises:
            RingError: the record is empty or can never fit in this ring.
        """
        size = len(payload)
        need = _RECORD_HEAD + size
        if size == 0 or size > _MAX_RECORD or need > self.capacity:
            raise RingError("record of " + str(size) + " bytes cannot fit a ring of " + str(self.capacity))
        while True:
            pos = self._place(need)
            if pos >= 0:
                break
            self._drop_oldest()
        if self.count == 0:
            self.head = pos
        elif pos == 0 and self.capacity - self.tail >= 2:
            self._store.write(HEADER_BYTES + self.tail, b"\x00\x00")  # wrap marker
        crc = _crc16(payload)
        rec = self._rec
        rec[0] = size >> 8
        rec[1] = size & 0xFF
        rec[2] = crc >> 8
        rec[3] = crc & 0xFF
        self._store.write(HEADER_BYTES + pos, rec)
        self._store.write(HEADER_BYTES + pos + _RECORD_HEAD, payload)
        self.tail = pos + need
        self.count += 1
        self._write_header()

    def _drop_oldest(self):
        after = self._skip(self.head)
        if after < 0:  # damaged since recover(): everything from here is lost
            self.dropped += self.count
            self.count = 0
        else:
            self.count -= 1
            self.dropped += 1
        self.head = after if self.count else self.tail

    def peek(self, n):
        """Copies of up to ``n`` oldest records, oldest first; the ring is unchanged."""
        out = []
        pos = self.head
        for _ in range(min(n, self.count)):
            payload, pos = self._read_record(pos)
            if payload is None:  # damaged since recover(): stop at it
                break
            out.append(bytes(payload))
        return out

    def pop(self, n):
        """Remove the ``n`` oldest records (after they were delivered)."""
        n = min(n, self.count)
        if n == 0:
            return
        pos = self.head
        for _ in range(n):
            pos = self._skip(pos)
            if pos < 0:  # damaged: nothing after it can be trusted
                n = self.count
                break
        self.count -= n
        self.head = pos if self.count else self.tail
        self._write_header()

    def close(self):
        self._store.close()

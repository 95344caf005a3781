"""Serial frames to the gateway: COBS + CRC-16 over a UART or the USB port.

Each sample is one frame of docs/serial_format.md, built by the gateway's own
reference encoder (core/serial_frame.py, deployed as /lib/serial_frame.py),
so the firmware cannot drift from the format the gateway decodes.

Serial has no acknowledgements: a frame counts as delivered once the UART
took it, and the sample loop then removes it from the ring. What the ring
covers on this link is the node's own side (a sample taken while the
transport was being set up); loss on the wire or in the gateway is
detected by the gateway's CRC and sequence numbers, not repaired.
docs/serial_format.md, "Guarantees", says what that means.

The first send writes a single 0x00, which ends whatever the gateway's
decoder picked up before (a boot banner), as the format recommends.

``uart.id`` "usb" writes to the USB CDC port (``sys.stdout.buffer``), which
is also the REPL: the node then prints nothing else (tidegate_node.main
switches its log off), because every other byte would reach the gateway as a
``text_line`` dead letter.
"""

from tidegate_node._compat import load_serial_frame
from tidegate_node.errors import TransportError

__all__ = ["UartTransport", "TransportError"]


class UartTransport:
    """Writes frames to one UART.

    Args:
        config: the node ``Config`` (``uart`` section).
        machine: the ``machine`` module (injected for tests).
        stream: for ``uart.id == "usb"``, the binary stream to write
            (default ``sys.stdout.buffer``).
    """

    max_batch = 8  # frames per flush call: one write each

    def __init__(self, config, machine=None, stream=None):
        self._encode_frame = load_serial_frame().encode_frame
        cfg = config.uart
        if cfg.id == "usb":
            if stream is None:
                import sys

                # The binary side of the console; ports without it take bytes on stdout itself.
                stream = getattr(sys.stdout, "buffer", sys.stdout)
            self._port = stream
        else:
            if machine is None:
                import machine
            self._port = machine.UART(cfg.id, baudrate=cfg.baudrate, tx=machine.Pin(cfg.tx), rx=machine.Pin(cfg.rx))
        self._started = False
        self.frames = 0
        self.failures = 0
        self.last_error = None

    connected = True

    def ensure_link(self):
        """Always True: a UART has no link state. The first call sends the resync byte."""
        if not self._started:
            self._write(b"\x00")
            self._started = True
        return True

    def _write(self, data, delivered=0):
        written = self._port.write(data)
        if written is not None and written != len(data):
            self.failures += 1
            self.last_error = "short write: " + str(written) + " of " + str(len(data))
            raise TransportError(self.last_error, delivered)

    def send(self, samples):
        """Write one frame per packed sample, oldest first.

        Raises:
            TransportError: the UART took only part of a frame; its
                ``delivered`` counts the whole frames before it. The rest of
                the batch is not written; the gateway drops the partial frame
                as ``bad_crc`` or ``bad_cobs``.
        """
        for index, packed in enumerate(samples):
            self._write(self._encode_frame(packed), index)
            self.frames += 1

    def maybe_ping(self):
        pass

    def close(self, radio_off=False):
        pass

"""What a sample looks like on the wire: the msgpack map and the serial frame, in hex.

Runs anywhere the firmware does (a board, the unix port, CPython with
firmware/ on the path); needs no sensors:

    mpremote connect /dev/ttyUSB0 run firmware/example_encode.py

The first sample is the worked example of docs/serial_format.md.
"""

from tidegate_node._compat import load_serial_frame
from tidegate_node.encode import encode_pack, encode_sample, with_sent_uptime

encode_frame = load_serial_frame().encode_frame

sample = encode_sample("n1", 7, 1, "up", 1500, [("t", 21.5)])
print("sample  ", sample.hex())
print("frame   ", encode_frame(sample).hex())
late = with_sent_uptime(sample, 61500)
print("sent late", late.hex())
print("pack of 2", encode_pack([sample, late]).hex())

"""Golden vectors shared by the firmware and the gateway.

Each vector is one sample as the firmware takes it, the msgpack bytes the
firmware must produce for it (keys in the fixed order of
tidegate_node/encode.py, ``su`` last when the sample was sent late), the
serial frame that carries them (docs/serial_format.md), and the readings the
gateway's codecs (core/codecs.py) must decode from those bytes when they
arrive at ``RECEIVED_MS`` with no memory of the device (an uptime sample
without ``su`` is placed at its receive time, one with ``su`` at
``RECEIVED_MS - (su - up)``; time_source 0 is the device clock, 1 mapped).

The first vector is the worked example of docs/serial_format.md. This file
is plain data that MicroPython imports too: tests/firmware/test_encode.py
checks the firmware's bytes on both VMs against it, and the gateway's
decoding of it on CPython. Never regenerate it from the code under test:
change it by hand, with the format documents, when the format changes.
"""

RECEIVED_MS = 1767225700000

VECTORS = [
    {
        "name": 'worked_example',
        "device": 'n1',
        "boot": 7,
        "seq": 1,
        "time_key": 'up',
        "time_ms": 1500,
        "values": [('t', 21.5)],
        "sent_up_ms": None,
        "msgpack": '85a164a26e31a16207a17301a27570cd05dca676616c75657381a174cb4035800000000000',
        "frame": '012185a164a26e31a16207a17301a27570cd05dca676616c75657381a174cb4035800101010103176700',
        "readings": [('n1', 't', 1767225700000, 21.5, 1)],
    },
    {
        "name": 'bme280_with_clock',
        "device": 'node-01',
        "boot": 3735928559,
        "seq": 42,
        "time_key": 'ts',
        "time_ms": 1767225600123,
        "values": [('temp_c', 21.53), ('pressure_hpa', 1013.25), ('rh_pct', 40.5)],
        "sent_up_ms": None,
        "msgpack": '85a164a76e6f64652d3031a162cedeadbeefa1732aa27473cf0000019b76daa87ba676616c75657383a674656d705f63cb403587ae147ae148ac70726573737572655f687061cb408faa0000000000a672685f706374cb4044400000000000',
        "frame": '011a85a164a76e6f64652d3031a162cedeadbeefa1732aa27473cf0130019b76daa87ba676616c75657383a674656d705f63cb403587ae147ae148ac70726573737572655f687061cb408faa010101010ca672685f706374cb4044400101010103f26b00',
        "readings": [('node-01', 'temp_c', 1767225600123, 21.53, 0), ('node-01', 'pressure_hpa', 1767225600123, 1013.25, 0), ('node-01', 'rh_pct', 1767225600123, 40.5, 0)],
    },
    {
        "name": 'replayed_uptime_sample',
        "device": 'pico-7',
        "boot": 12345,
        "seq": 0,
        "time_key": 'up',
        "time_ms": 81234,
        "values": [('battery_v', 3.71), ('door_open', True), ('count', 7), ('state', 'ok')],
        "sent_up_ms": 3681234,
        "msgpack": '86a164a67069636f2d37a162cd3039a17300a27570ce00013d52a676616c75657384a9626174746572795f76cb400dae147ae147aea9646f6f725f6f70656ec3a5636f756e7407a57374617465a26f6ba27375ce00382bd2',
        "frame": '011286a164a67069636f2d37a162cd3039a17305a27570ce3e013d52a676616c75657384a9626174746572795f76cb400dae147ae147aea9646f6f725f6f70656ec3a5636f756e7407a57374617465a26f6ba27375ce06382bd2dac100',
        "readings": [('pico-7', 'battery_v', 1767222100000, 3.71, 1), ('pico-7', 'door_open', 1767222100000, True, 1), ('pico-7', 'count', 1767222100000, 7, 1), ('pico-7', 'state', 1767222100000, 'ok', 1)],
    },
    {
        "name": 'wide_integers',
        "device": 'esp32-a4cf12',
        "boot": 18446744073709551615,
        "seq": 4294967296,
        "time_key": 'up',
        "time_ms": 2147483653,
        "values": [('t', -0.5)],
        "sent_up_ms": None,
        "msgpack": '85a164ac65737033322d613463663132a162cfffffffffffffffffa173cf0000000100000000a27570ce80000005a676616c75657381a174cbbfe0000000000000',
        "frame": '011f85a164ac65737033322d613463663132a162cfffffffffffffffffa173cf0101020101010106a27570ce80010f05a676616c75657381a174cbbfe0010101010103b20a00',
        "readings": [('esp32-a4cf12', 't', 1767225700000, -0.5, 1)],
    },
    {
        "name": 'utf8_names_and_negatives',
        "device": 'küche-1',
        "boot": 1,
        "seq": 3,
        "time_key": 'ts',
        "time_ms": 1704067200000,
        "values": [('temp_c', -12.25), ('rh_pct', 100.0), ('offset', -300)],
        "sent_up_ms": None,
        "msgpack": '85a164a86bc3bc6368652d31a16201a17303a27473cf0000018cc251f400a676616c75657383a674656d705f63cbc028800000000000a672685f706374cb4059000000000000a66f6666736574d1fed4',
        "frame": '011785a164a86bc3bc6368652d31a16201a17303a27473cf0106018cc251f414a676616c75657383a674656d705f63cbc02880010101010ba672685f706374cb405901010101010da66f6666736574d1fed4e4b600',
        "readings": [('küche-1', 'temp_c', 1704067200000, -12.25, 0), ('küche-1', 'rh_pct', 1704067200000, 100.0, 0), ('küche-1', 'offset', 1704067200000, -300, 0)],
    },
]

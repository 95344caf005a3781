"""Nodes whose output feeds the real gateway intakes (tests/firmware/test_gateway_feed.py).

Both nodes have a clock that is set from the start (an RTC, or NTP done
before), so every sample carries its device time ``ts`` and the gateway must
keep it exactly.
"""

from fakesite import Site
from tidegate_node import main

CLOCK_SET_AT = 1767225600000  # 2026-01-01T00:00:00Z, at the node's first instant


def case_uart_node():
    site = Site()
    site.time.set_epoch_ms(CLOCK_SET_AT)
    path = site.config("feed-uart.json", device="node-01", transport="uart",
                       sensors=[{"type": "bme280", "period_s": 10}, {"type": "dht22", "period_s": 20, "prefix": "dht_"}])
    node = main.run(path, site.time, max_cycles=12)
    return {"bytes": bytes(site.board.uart_out[1]), "seq": node.seq}


def case_mqtt_node_through_an_outage_and_a_lost_puback():
    site = Site()
    site.time.set_epoch_ms(CLOCK_SET_AT)
    path = site.config("feed-mqtt.json", device="node-01", sensors=[{"type": "sht31", "period_s": 10}])
    site.time.at(25000, lambda: setattr(site.broker, "up", False))
    site.time.at(70000, lambda: setattr(site.broker, "up", True))
    site.time.at(95000, lambda: setattr(site.broker, "lose_puback", 1))
    node = main.run(path, site.time, max_cycles=14)
    return {"messages": site.payloads(), "seq": node.seq, "ring_left": len(node.ring)}

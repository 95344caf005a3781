"""Node cases: the whole firmware (tidegate_node.main.run) on a fake site."""

import machine
import network
from fakesite import Site, remove
from faketime import FakeTime
from tidegate_node import main
from tidegate_node.config import ConfigError, from_dict

SENSORS_MIXED = [
    {"type": "bme280", "period_s": 60},
    {"type": "sht31", "period_s": 30, "prefix": "sht_"},
    {"type": "battery", "period_s": 300},
]


def case_mains_mqtt_follows_each_sensors_schedule():
    site = Site()
    path = site.config("mains.json", sensors=SENSORS_MIXED, watchdog_ms=8000)
    node = main.run(path, site.time, max_cycles=11)
    wdt = site.board.wdt
    return {
        "messages": site.payloads(),
        "qos": [m[2] for m in site.broker.messages],
        "wdt_longest_gap": wdt.longest_gap_ms,
        "wdt_expired": wdt.expired,
        "wdt_timeout": wdt.timeout,
        "max_sleep": max(site.time.sleeps),
        "elapsed": site.time.monotonic_ms,
        "wifi_connects": site.air.connects,
        "mqtt_connects": len(site.broker.connects),
        "connect_timeout": site.broker.connects[0][3],
        "i2c": site.board.i2c_opened,
        "ring_left": len(node.ring),
        "seq": node.seq,
    }


def case_outage_is_replayed_in_order_in_packs():
    site = Site()
    path = site.config("outage.json", sensors=[{"type": "sht31", "period_s": 30}])
    site.time.at(45000, lambda: setattr(site.broker, "up", False))
    site.time.at(400000, lambda: setattr(site.broker, "up", True))
    node = main.run(path, site.time, max_cycles=16)
    return {"messages": site.payloads(), "ring_left": len(node.ring), "seq": node.seq,
            "failures": node.transport.failures}


def case_lost_puback_sends_the_sample_again():
    site = Site()
    path = site.config("puback.json", sensors=[{"type": "sht31", "period_s": 10}])
    site.time.at(25000, lambda: setattr(site.broker, "lose_puback", 1))
    node = main.run(path, site.time, max_cycles=6)
    return {"messages": site.payloads(), "seq": node.seq, "mqtt_connects": len(site.broker.connects)}


def case_uart_frames():
    site = Site()
    path = site.config("uart.json", transport="uart", sensors=[{"type": "dht22", "period_s": 5},
                                                               {"type": "battery", "period_s": 10}])
    node = main.run(path, site.time, max_cycles=4)
    return {"bytes": bytes(site.board.uart_out[1]), "opened": site.board.uart_opened, "seq": node.seq,
            "ring_left": len(node.ring)}


def case_battery_node_deep_sleeps_and_keeps_its_identity():
    remove("battery.ring")
    remove("battery.json.state")
    site = Site()
    from tidegate_node.config import load

    path = site.config("battery.json", power="battery", send_every=3, ring={"file": "", "bytes": 4096},
                       sensors=[{"type": "bme280", "period_s": 60}, {"type": "battery", "period_s": 120}])
    # The ring file lives next to the config in the scratch area.
    import json
    import scratch

    with open(path) as f:
        data = json.load(f)
    data["ring"]["file"] = scratch.path("battery.ring")
    with open(path, "w") as f:
        json.dump(data, f)
    load(path)
    wakes = []
    radio = []
    for boot in range(7):
        try:
            main.run(path, site.time)
        except machine.DeepSleep as sleep:
            ms = sleep.args[0]
            wakes.append(ms)
            radio.append(network.air.station.active() if network.air.station else None)
            site.board.reset_cause = machine.DEEPSLEEP_RESET
            site.time.reboot(ms)
    # A power cycle: a new boot id, seq from 0.
    site.board.reset_cause = machine.PWRON_RESET
    site.time.reboot(1000)
    for boot in range(3):
        try:
            main.run(path, site.time)
        except machine.DeepSleep as sleep:
            site.board.reset_cause = machine.DEEPSLEEP_RESET
            site.time.reboot(sleep.args[0])
    return {"messages": site.payloads(), "deepsleeps": site.board.deepsleeps, "radio_on_at_sleep": radio,
            "wifi_connects": site.air.connects}


def case_battery_node_that_overruns_its_period_still_sleeps_on_a_timer():
    remove("overrun.ring")
    remove("overrun.json.state")
    site = Site()
    site.air.polls_to_connect = 30  # Wi-Fi takes 3 s to associate; the period is 1 s
    import scratch

    path = site.config("overrun.json", power="battery", ring={"file": scratch.path("overrun.ring")},
                       sensors=[{"type": "sht31", "period_s": 1}])
    for _ in range(3):
        try:
            main.run(path, site.time)
        except machine.DeepSleep as sleep:
            site.board.reset_cause = machine.DEEPSLEEP_RESET
            site.time.reboot(sleep.args[0])
    return {"deepsleeps": site.board.deepsleeps, "messages": len(site.broker.messages)}


def case_ntp_sets_the_clock_after_the_first_connect():
    site = Site()
    path = site.config("ntp.json", ntp=True, sensors=[{"type": "sht31", "period_s": 60}])
    main.run(path, site.time, max_cycles=3)
    return {"messages": site.payloads(), "world_start": site.time.world_start_ms}


def case_uptime_survives_the_ticks_wrap():
    site = Site(time=FakeTime(start_ticks=(1 << 30) - 70000))
    path = site.config("wrap.json", sensors=[{"type": "sht31", "period_s": 30}])
    main.run(path, site.time, max_cycles=6)
    return {"messages": site.payloads()}


def case_full_ring_drops_oldest_and_says_so():
    site = Site()
    site.air.aps = {}  # the access point is gone
    site.time.at(3000000, lambda: site.air.aps.update({"site": "secret"}))
    path = site.config("overflow.json", ring={"bytes": 512}, sensors=[{"type": "sht31", "period_s": 60}])
    node = main.run(path, site.time, max_cycles=53)
    return {"messages": site.payloads(), "dropped": node.ring.dropped, "seq": node.seq}


def case_sensor_plugged_in_later():
    site = Site(sensors=False)
    site.board.dht[4] = None
    path = site.config("later.json", sensors=[{"type": "bme280", "period_s": 30}])
    site.time.at(70000, lambda: site.board.i2c_devices[0].update({0x76: site.bme280}))
    node = main.run(path, site.time, max_cycles=5)
    return {"messages": site.payloads(), "errors": node.sensor_errors}


def case_keepalive_pings_while_idle():
    site = Site()
    path = site.config("ping.json", mqtt={"host": "gw", "keepalive_s": 60}, sensors=[{"type": "sht31", "period_s": 300}])
    main.run(path, site.time, max_cycles=3)
    return {"pings": site.broker.pings, "messages": len(site.broker.messages)}


def case_boot_delay_on_cold_boot_only():
    site = Site()
    path = site.config("delay.json", boot_delay_ms=3000, sensors=[{"type": "sht31", "period_s": 60}])
    main.run(path, site.time, max_cycles=1)
    return site.time.sleeps[0]


def case_configs_are_validated():
    base = {"device": "n1", "wifi": {"ssid": "s"}, "mqtt": {"host": "h"}, "sensors": [{"type": "bme280"}]}
    bad = [
        {},
        {"device": "n1", "transport": "lora"},
        {"device": "n1", "sensors": [{"type": "bme280"}]},
        {"device": "n1", "wifi": {"ssid": "s"}, "sensors": [{"type": "bme280"}]},
        dict(base, sensors=[]),
        dict(base, sensors=[{"type": "bme280", "period_s": 0}]),
        dict(base, sensors=[{"type": "bme280", "period_s": True}]),
        dict(base, sensors=[{"type": "bme280"}, {"type": "sht31"}]),
        dict(base, sensors=[{"type": "bme280", "address": 300}]),
        dict(base, watchdog_ms=9000),
        dict(base, mqtt={"host": "h", "topic": "sensors/#"}),
        dict(base, power="battery", ring={"file": None}),
        dict(base, board="arduino"),
    ]
    out = []
    for config in bad:
        try:
            from_dict(config)
            out.append("accepted")
        except ConfigError as exc:
            out.append(str(exc))
    good = from_dict(dict(base, board="pico_w", sensors=[{"type": "bme280"}, {"type": "sht31", "prefix": "sht_"},
                                                          {"type": "dht22", "prefix": "dht_"}, {"type": "battery"}]))
    uart = from_dict({"device": "n2", "transport": "uart", "uart": {"id": "usb"}, "sensors": [{"type": "dht22"}],
                      "power": "battery"})
    out.append([good.i2c.sda, good.i2c.scl, good.sensors[2].pin, good.sensors[3].pin, good.mqtt.topic,
                good.mqtt.client_id, good.ring.file, good.watchdog_ms])
    out.append([uart.uart.id, uart.ring.file, uart.wifi, uart.sensors[0].pin])
    return out

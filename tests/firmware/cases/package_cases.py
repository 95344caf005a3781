"""Package cases: the public names each module exports exist, on both VMs."""

import tidegate_node

MODULES = ["clock", "config", "encode", "errors", "main", "ring", "transport_mqtt", "transport_uart", "drivers",
           "drivers.bme280", "drivers.sht31", "drivers.dht22", "drivers.battery", "_umsgpack"]


def case_exports():
    out = []
    for name in MODULES:
        module = __import__("tidegate_node." + name, None, None, ["__all__"])
        missing = [n for n in module.__all__ if not hasattr(module, n)]
        out.append([name, len(module.__all__), missing])
    return out


def case_lazy_submodules():
    import sys

    before = "tidegate_node.ring" in sys.modules
    ring = tidegate_node.ring
    return [before, ring.__name__, "tidegate_node.ring" in sys.modules, tidegate_node.__version__]

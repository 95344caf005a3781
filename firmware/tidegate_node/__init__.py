"""tidegate_node: MicroPython firmware for tidegate sensor nodes (ESP32, Pico W).

Submodules load lazily (``tidegate_node.encode`` is imported on first use of
the attribute), so a node that only uses MQTT never pays the RAM for the UART
transport, and the other way round. See firmware/README.md.
"""

__version__ = "0.1.0"

__all__ = [
    "__version__",
    "clock",
    "config",
    "drivers",
    "encode",
    "main",
    "ring",
    "transport_mqtt",
    "transport_uart",
]


def __getattr__(name):
    # Lazy submodules, as micropython-async's primitives/__init__.py does:
    # importing the package costs a few hundred bytes, not the whole firmware.
    # MicroPython consults this hook for `from tidegate_node import x` before
    # it looks for a submodule, and does not fall back if it raises, so every
    # submodule name (private ones too) is imported here.
    if name.startswith("__"):
        raise AttributeError(name)
    try:
        module = __import__("tidegate_node." + name, None, None, [name])
    except ImportError:
        raise AttributeError(name)
    globals()[name] = module
    return module

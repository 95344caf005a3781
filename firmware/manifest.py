# MicroPython manifest for freezing the tidegate node firmware into a custom
# build (bytecode in flash: no RAM for code; see README.md, "Memory"):
#
#   include("$(MPY_DIR)/ports/esp32/boards/manifest.py")
#   include("/path/to/tidegate/firmware/manifest.py")
#
# umsgpack.py (u-msgpack-python 2.8, from PyPI) and serial_frame.py
# (tidegate's core/serial_frame.py) are not in micropython-lib: freeze them
# with module(), giving their directories as base_path, or let
# `tidegate firmware deploy` copy them to /lib.
metadata(
    description="tidegate sensor node: sensors to msgpack samples over MQTT (QoS 1) or COBS serial frames",
    version="0.1.0",
)

require("umqtt.simple")
require("ntptime")
package("tidegate_node")

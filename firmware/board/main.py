# /main.py on the board: MicroPython runs it after boot.py at every boot and
# every wake from deep sleep. It only starts the node; everything else is in
# /lib/tidegate_node (see firmware/README.md). To stop the node, press Ctrl-C
# in the first seconds after a reset (config "boot_delay_ms") or run
# `mpremote connect PORT` then Ctrl-C.
import tidegate_node.main

tidegate_node.main.run()

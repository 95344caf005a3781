"""tidegate core: pure logic with no I/O of its own.

Bytes and values in, bytes and events out, time passed in. Nothing here opens
a socket or a file, starts a thread or reads a clock; ``edge`` and ``bridge``
are the shells that do.
"""

"""tidegate bridge: forwarding batches upstream, and the central side that decodes them.

A thin shell over ``core``: it reads the durable log through the interface the
composition root hands it, and never imports ``edge``.
"""

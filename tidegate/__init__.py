"""tidegate's composition root: the command line, and the one place that wires
``edge`` (intake, log files) and ``bridge`` (forwarding) together."""

__version__ = "0.1.0"

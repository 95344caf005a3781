"""Scratch file names for cases that write files: the VM's / or a host temp directory."""

import sys

if sys.implementation.name == "micropython":

    def path(name):
        return "/" + name

else:
    import os
    import tempfile

    _DIR = tempfile.mkdtemp(prefix="tidegate-fw-")

    def path(name):
        return os.path.join(_DIR, name)

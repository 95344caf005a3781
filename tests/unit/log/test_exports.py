"""The public names of core.log are exported and exist."""

from __future__ import annotations

import core.log
import core.log.format


def test_every_name_in_all_exists() -> None:
    for module in (core.log, core.log.format):
        for name in module.__all__:
            assert hasattr(module, name), (module.__name__, name)


def test_the_api_others_code_against_is_exported() -> None:
    for name in ("Log", "LogConfig", "LogRecord", "LogFull", "RecordRejected", "UNSYNCED", "FileSystem", "fsck"):
        assert name in core.log.__all__
    for method in ("append", "append_many", "maybe_sync", "sync", "durable_offset", "end_offset", "start_offset",
                   "streams", "read", "read_time_range", "load_cursor", "store_cursor", "enforce_retention",
                   "enforce_quota", "maybe_seal", "stats", "close"):
        assert callable(getattr(core.log.Log, method))


def test_core_log_does_no_io_of_its_own() -> None:
    import pathlib
    import re

    for path in pathlib.Path(core.log.__file__).parent.glob("*.py"):
        text = path.read_text()
        assert not re.search(r"^\s*(import|from)\s+(os|time|threading|io|pathlib|socket)\b", text, re.M), path
        assert "open(" not in text.replace("open_append(", "").replace("_open(", "").replace("open_log(", ""), path

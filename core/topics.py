"""MQTT topic templates: map a topic to a stream and to reading fields.

A template is an MQTT topic filter whose single-level wildcards may be named:
``sites/{site}/sensors/{device}/{metric}``. The subscription filter replaces
each ``{name}`` by ``+``; matching a topic returns the named levels.
``+`` and a trailing ``#`` may also be used unnamed.

A route may also name the devices it takes (``devices``, shell-style globs
such as ``pump-*``), so a stream can be a group of devices as well as a group
of topics. The devices are those of the decoded message, so the intake
(core/intake.py) applies that part of the rule after decoding; here
:func:`topic_candidates` gives the routes whose topic matches, in order.
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from core.errors import LocalError

__all__ = ["TopicTemplate", "Route", "route_topic", "topic_candidates"]

_NAMED = re.compile(r"^\{([a-z_][a-z0-9_]*)\}$")


@dataclass(frozen=True, slots=True)
class TopicTemplate:
    template: str
    levels: tuple[str, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not self.template or "\0" in self.template:
            raise LocalError(f"topic template {self.template!r} must be a non-empty MQTT filter")
        levels = tuple(self.template.split("/"))
        for i, level in enumerate(levels):
            if level == "#" and i != len(levels) - 1:
                raise LocalError(f"in topic template {self.template!r}: '#' must be the last level")
            if level not in ("+", "#") and ("+" in level or "#" in level or "{" in level or "}" in level):
                if not _NAMED.match(level):
                    raise LocalError(
                        f"in topic template {self.template!r}: level {level!r} must be literal, '+', '#' or '{{name}}'"
                    )
        names = [m.group(1) for level in levels if (m := _NAMED.match(level))]
        if len(names) != len(set(names)):
            raise LocalError(f"topic template {self.template!r} names a level twice")
        object.__setattr__(self, "levels", levels)

    @property
    def subscription(self) -> str:
        """The MQTT subscription filter for this template."""
        return "/".join("+" if _NAMED.match(level) else level for level in self.levels)

    def match(self, topic: str) -> dict[str, str] | None:
        """The named levels of a topic this template matches, else None."""
        parts = topic.split("/")
        captured: dict[str, str] = {}
        for i, level in enumerate(self.levels):
            if level == "#":
                return captured
            if i >= len(parts):
                return None
            named = _NAMED.match(level)
            if named:
                captured[named.group(1)] = parts[i]
            elif level != "+" and level != parts[i]:
                return None
        return captured if len(parts) == len(self.levels) else None


@dataclass(frozen=True, slots=True)
class Route:
    """Messages on topics matching ``template`` go to ``stream``, decoded as ``payload_format``.

    The template's ``{device}`` and ``{metric}`` levels, when present, supply
    the reading's device and metric when the payload leaves them out.

    Attributes:
        devices: shell-style globs (``*``, ``?``, ``[...]``, case-sensitive);
            if given, the route takes a message only if every device in it
            matches one of them. Empty (the default): any device.
    """

    template: TopicTemplate
    stream: str
    payload_format: str = "auto"
    devices: tuple[str, ...] = ()
    _device_match: Callable[[str], object] | None = field(init=False, repr=False, compare=False, default=None)

    def __post_init__(self) -> None:
        if not _STREAM.match(self.stream) or self.stream.startswith("_"):
            raise LocalError(
                f"stream {self.stream!r} must be 1-64 of [A-Za-z0-9._-], not starting with '_' (reserved)"
            )
        if isinstance(self.devices, str) or not all(isinstance(d, str) and d and "\0" not in d for d in self.devices):
            raise LocalError(f"route devices {self.devices!r} must be a list of non-empty glob patterns")
        object.__setattr__(self, "devices", tuple(self.devices))
        # One compiled pattern for all the globs: matching stays one regex call per device.
        object.__setattr__(self, "_device_match",
                           re.compile("|".join(f"(?:{fnmatch.translate(d)})" for d in self.devices)).match
                           if self.devices else None)

    def takes_devices(self, devices: Iterable[str]) -> bool:
        """Whether every one of ``devices`` is one this route takes (always, without a device list)."""
        match = self._device_match
        return match is None or all(match(device) for device in devices)


_STREAM = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def topic_candidates(routes: tuple[Route, ...], topic: str) -> Iterator[tuple[Route, dict[str, str]]]:
    """The routes whose template matches ``topic``, in order, with the captured levels."""
    for route in routes:
        captured = route.template.match(topic)
        if captured is not None:
            yield route, captured


def route_topic(routes: tuple[Route, ...], topic: str) -> tuple[Route, dict[str, str]] | None:
    """The first route whose template matches ``topic``, with the captured levels (device lists not applied)."""
    return next(topic_candidates(routes, topic), None)

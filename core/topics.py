"""MQTT topic templates: map a topic to a stream and to reading fields.

A template is an MQTT topic filter whose single-level wildcards may be named:
``sites/{site}/sensors/{device}/{metric}``. The subscription filter replaces
each ``{name}`` by ``+``; matching a topic returns the named levels.
``+`` and a trailing ``#`` may also be used unnamed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from core.errors import LocalError

__all__ = ["TopicTemplate", "Route", "route_topic"]

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
    """

    template: TopicTemplate
    stream: str
    payload_format: str = "auto"

    def __post_init__(self) -> None:
        if not _STREAM.match(self.stream) or self.stream.startswith("_"):
            raise LocalError(
                f"stream {self.stream!r} must be 1-64 of [A-Za-z0-9._-], not starting with '_' (reserved)"
            )


_STREAM = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


def route_topic(routes: tuple[Route, ...], topic: str) -> tuple[Route, dict[str, str]] | None:
    """The first route whose template matches ``topic``, with the captured levels."""
    for route in routes:
        captured = route.template.match(topic)
        if captured is not None:
            return route, captured
    return None

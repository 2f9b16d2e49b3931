"""argparse types for every command's numbers and lists, so a bad value stops at the command line with argparse's
own one-line error ("argument --np: ... must be a whole number >= 1, got '0'") instead of reaching mpirun, a
worker or a loop that never runs. A leaf: imports nothing from hvdfast.

    p.add_argument("--steps", type=count(1), default=5)
    p.add_argument("--fusion-mb", type=csv(amount(0)), default="0,16,64")   # the checked text, split later
"""
from __future__ import annotations

import argparse
from typing import Callable, Iterable


def count(minimum: int = 1) -> Callable[[str], int]:
    """A whole number >= minimum."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"must be a whole number >= {minimum}, got {text!r}")
        return value
    parse.__name__ = f"whole number >= {minimum}"
    return parse


def count_or(word: str, minimum: int = 1) -> Callable[[str], str]:
    """A whole number >= minimum, or `word` (e.g. "default"). Returns the text."""
    number = count(minimum)

    def parse(text: str) -> str:
        if text == word:
            return text
        try:
            return str(number(text))
        except argparse.ArgumentTypeError:
            raise argparse.ArgumentTypeError(f"must be a whole number >= {minimum} or {word!r}, got {text!r}") \
                from None
    parse.__name__ = f"whole number >= {minimum} or {word}"
    return parse


def amount(minimum: float = 0.0, above: bool = False) -> Callable[[str], float]:
    """A number >= minimum (above=True: > minimum)."""
    bound = f"> {minimum:g}" if above else f">= {minimum:g}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = None
        if value is None or value != value or (value <= minimum if above else value < minimum):
            raise argparse.ArgumentTypeError(f"must be a number {bound}, got {text!r}")
        return value
    parse.__name__ = f"number {bound}"
    return parse


def one_of(choices: Iterable[str]) -> Callable[[str], str]:
    """One of `choices` (for list elements; a single value takes argparse's own choices=)."""
    allowed = tuple(choices)

    def parse(text: str) -> str:
        if text not in allowed:
            raise argparse.ArgumentTypeError(f"{text!r} is not one of {', '.join(allowed)}")
        return text
    parse.__name__ = "one of " + ", ".join(allowed)
    return parse


def csv(element: Callable[[str], object]) -> Callable[[str], str]:
    """A comma-separated list whose every item `element` accepts. Returns the text (callers split it), so the
    same string can be passed on to a worker's command line unchanged."""
    def parse(text: str) -> str:
        items = [t.strip() for t in text.split(",")]
        if not text.strip() or any(not t for t in items):
            raise argparse.ArgumentTypeError(f"expected a comma-separated list, got {text!r}")
        for t in items:
            try:
                element(t)
            except argparse.ArgumentTypeError as exc:
                raise argparse.ArgumentTypeError(f"item {t!r} of {text!r}: {exc}") from None
        return ",".join(items)
    parse.__name__ = "list"
    return parse


def hosts(text: str) -> str:
    """horovodrun's -H list, h1:4,h2:4 (a host without :N has one slot). Returns the text."""
    items = [t.strip() for t in text.split(",")]
    for t in items:
        name, colon, slots = t.partition(":")
        if not name or (colon and not (slots.isdigit() and int(slots) >= 1)):
            raise argparse.ArgumentTypeError(f"item {t!r} of {text!r}: expected host or host:slots with slots "
                                             f">= 1 (e.g. node1:4,node2:4)")
    return ",".join(items)


def host_slots(spec: str) -> list[tuple[str, int]]:
    """(host, slots) of a hosts() list, in order: h1:4,h2 -> [(h1, 4), (h2, 1)]."""
    return [(name, int(slots or 1)) for name, _, slots in (t.strip().partition(":") for t in spec.split(","))
            if name]


def total_slots(spec: str) -> int:
    """The slots of a hosts() list: h1:4,h2:4 -> 8."""
    return sum(n for _, n in host_slots(spec))

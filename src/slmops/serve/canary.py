"""Canary roll-outs: one public model name split across versions by weight.

``support = {"support@prod": 90, "support@candidate": 10}`` sends about 10% of requests for
``support`` to the candidate. A request with a ``user`` field always lands on the same version
(the user is hashed onto the weights), a ``x-slmops-pin`` header naming one of the route's
targets overrides the split, and weights change at run time through the admin endpoint.
"""

from __future__ import annotations

import hashlib
import random
import threading

from slmops.errors import SlmopsError

PIN_HEADER = "x-slmops-pin"


def parse_route(spec: str) -> tuple[str, dict[str, float]]:
    """``"support=support@prod:90,support@candidate:10"`` → (``support``, weights)."""
    name, eq, rest = spec.partition("=")
    weights: dict[str, float] = {}
    for part in rest.split(","):
        ref, colon, weight = part.strip().rpartition(":")
        try:
            weights[ref] = float(weight)
        except ValueError:
            colon = ""
        if not colon or not ref:
            raise SlmopsError(
                f"Invalid canary route {spec!r}.", "Write NAME=REF:WEIGHT,REF:WEIGHT, e.g. s=s@prod:90,s@new:10."
            )
    if not eq or not name.strip():
        raise SlmopsError(f"Invalid canary route {spec!r}: no public name before '='.", "Write NAME=REF:WEIGHT,...")
    return name.strip(), validate_weights(name.strip(), weights)


def validate_weights(name: str, weights: dict[str, float]) -> dict[str, float]:
    if not weights or any(w < 0 for w in weights.values()) or sum(weights.values()) <= 0:
        raise SlmopsError(f"Route {name!r} needs at least one target and non-negative weights that add up to > 0.")
    if any("+" in ref or "/" in ref for ref in weights):
        raise SlmopsError(f"Route {name!r} targets must be store references (NAME, NAME:VERSION, NAME@ALIAS).")
    return dict(weights)


class Router:
    """Public name → weighted targets; thread-safe, changed at run time."""

    def __init__(self, routes: dict[str, dict[str, float]] | None = None) -> None:
        self._routes = {n: validate_weights(n, w) for n, w in (routes or {}).items()}
        self._lock = threading.Lock()

    def __contains__(self, name: str) -> bool:
        return name in self._routes

    def names(self) -> list[str]:
        return sorted(self._routes)

    def snapshot(self) -> dict[str, dict[str, float]]:
        with self._lock:
            return {n: dict(w) for n, w in self._routes.items()}

    def set(self, name: str, weights: dict[str, float]) -> None:
        checked = validate_weights(name, weights)
        with self._lock:
            self._routes[name] = checked

    def pick(self, name: str, *, user: str | None = None, pin: str | None = None) -> str:
        with self._lock:
            weights = dict(self._routes[name])
        if pin is not None and pin in weights:
            return pin
        if user:
            digest = hashlib.sha256(f"{name}\0{user}".encode()).digest()
            point = int.from_bytes(digest[:8], "big") / 2**64
        else:
            point = random.random()
        total = sum(weights.values())
        upto = 0.0
        for ref, w in weights.items():
            upto += w / total
            if point < upto:
                return ref
        return next(ref for ref, w in reversed(weights.items()) if w > 0)

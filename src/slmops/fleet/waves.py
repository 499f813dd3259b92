"""Wave plans for a roll-out: which devices, in which order, how many per wave.

``--waves 1,10%,50%,100%`` gives cumulative targets: a count or a percentage of the devices the
roll-out covers (those matching ``--select``). The last wave must be ``100%``. The order of the
devices is deterministic (a hash of rollout id and device id) and *stratified* over label sets:
every prefix of the order holds each label group in proportion, so a 10% wave already contains
devices of every zone/hardware/... value, and a fault on one label value shows up early.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from slmops.errors import SlmopsError

_STEP = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(%?)\s*$")


@dataclass(frozen=True)
class WaveStep:
    value: float
    percent: bool

    def target(self, total: int) -> int:
        """Cumulative devices reached once this wave is done (at least 1 when total > 0)."""
        if total <= 0:
            return 0
        n = math.ceil(self.value * total / 100 - 1e-9) if self.percent else int(self.value)
        return max(1, min(total, n))

    def __str__(self) -> str:
        v = f"{self.value:g}"
        return f"{v}%" if self.percent else v


def parse_waves(text: str) -> list[WaveStep]:
    """``"1,10%,50%,100%"`` -> steps; they must grow and end at ``100%``."""
    steps: list[WaveStep] = []
    for part in str(text).split(","):
        m = _STEP.match(part)
        if not m:
            raise SlmopsError(f"--waves: cannot read {part.strip()!r}.",
                              hint="Give counts and percentages separated by commas, e.g. 1,10%,50%,100%.")
        value, pct = float(m.group(1)), bool(m.group(2))
        if value <= 0 or (pct and value > 100) or (not pct and value != int(value)):
            raise SlmopsError(f"--waves: {part.strip()!r} must be a whole count >= 1 or a percentage in (0, 100].")
        steps.append(WaveStep(value, pct))
    last = steps[-1]
    if not (last.percent and last.value == 100):
        raise SlmopsError(f"--waves {text!r} does not end at 100%.",
                          hint="End the list with 100%, e.g. 1,10%,50%,100%, so every device is covered.")
    return steps


def parse_budget(text: str | int) -> tuple[float, bool]:
    """``--max-unavailable N|P%`` -> (value, is_percent)."""
    m = _STEP.match(str(text))
    if not m or (m.group(2) and float(m.group(1)) > 100) or (not m.group(2) and float(m.group(1)) % 1):
        raise SlmopsError(f"--max-unavailable: cannot read {text!r}.",
                          hint="Give a whole number of devices (e.g. 2) or a percentage of the wave (e.g. 10%).")
    return float(m.group(1)), bool(m.group(2))


def budget_for(budget: tuple[float, bool], wave_size: int) -> int:
    """How many devices of a wave may be unavailable (percentages round down, like Kubernetes)."""
    value, pct = budget
    return int(math.floor(value * wave_size / 100 + 1e-9)) if pct else int(value)


def parse_selector(text: str | Mapping[str, str] | None) -> dict[str, str]:
    """``"zone=a,hw=pi5"`` -> ``{"zone": "a", "hw": "pi5"}``."""
    if text is None or text == "":
        return {}
    if isinstance(text, Mapping):
        return {str(k): str(v) for k, v in text.items()}
    out: dict[str, str] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise SlmopsError(f"--select: cannot read {part.strip()!r}.", hint="Write key=value pairs: zone=a,hw=pi5.")
        out[key.strip()] = value.strip()
    return out


def matches(labels: Mapping[str, str], selector: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


def _hash(rollout_id: str, device_id: str) -> str:
    return hashlib.sha256(f"{rollout_id}\0{device_id}".encode()).hexdigest()


def order_devices(rollout_id: str, labels: Mapping[str, Mapping[str, str]],
                  first: Iterable[str] = ()) -> list[str]:
    """Deterministic, label-stratified order of the devices in ``labels`` (id -> labels).

    Within each label group devices are sorted by hash; each device's key is its fractional
    position in its group, so every prefix of the result holds each group in proportion.
    Devices in ``first`` (e.g. the ones online now) come before the rest, each part stratified.
    """
    preferred = set(first)

    def stratify(ids: list[str]) -> list[str]:
        groups: dict[tuple[tuple[str, str], ...], list[str]] = defaultdict(list)
        for d in ids:
            groups[tuple(sorted(labels[d].items()))].append(d)
        keyed: list[tuple[float, str, str]] = []
        for members in groups.values():
            members.sort(key=lambda d: _hash(rollout_id, d))
            n = len(members)
            keyed += [((i + 0.5) / n, _hash(rollout_id, d), d) for i, d in enumerate(members)]
        keyed.sort()
        return [d for _, _, d in keyed]

    ids = sorted(labels)
    return stratify([d for d in ids if d in preferred]) + stratify([d for d in ids if d not in preferred])


def cut_waves(order: list[str], steps: list[WaveStep]) -> list[list[str]]:
    """Split ``order`` into waves (cumulative targets); waves that would be empty are dropped."""
    waves: list[list[str]] = []
    done = 0
    for step in steps:
        target = step.target(len(order))
        if target > done:
            waves.append(order[done:target])
            done = target
    return waves

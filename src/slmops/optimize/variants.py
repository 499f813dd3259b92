"""The fast variant of a built-in model: what ``generate``, ``chat`` and ``serve`` run by default.

A built-in (catalog) model named without a version runs as its int4 ONNX Runtime GenAI build,
the way Foundry Local picks the variant built for the hardware: on first use the variant is
built once with ``slmops optimize NAME --to onnx --precision int4`` (so it is registered in the
store with its lineage and quality metrics) and reused afterwards. An exact version
(``NAME:1``), an alias, a path, any store model, an adapter or ``--precision fp32`` runs exactly
what was named. ``eval`` and the pipeline never go through here: they use what they are given.
"""

from __future__ import annotations

from dataclasses import dataclass

from slmops.errors import SlmopsError
from slmops.models.pull import Progress
from slmops.models.store import ModelStore

PRECISIONS = ("auto", "int4", "fp32")


@dataclass(frozen=True)
class Variant:
    ref: str  # what to open
    note: str  # one line for the user: which variant runs and how to opt out


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise SlmopsError(f"--precision must be one of {', '.join(PRECISIONS)} (got {precision!r}).",
                          "auto (the default) runs a built-in model's int4 variant; fp32 the original.")
    return precision


def fast_variant(ref: str, store: ModelStore, *, precision: str = "auto", progress: Progress | None = None) -> Variant:
    """The model to run for ``ref``: its int4 variant for a bare built-in name (built once),
    else ``ref`` itself."""
    from slmops.models.catalog import CATALOG

    check_precision(precision)
    if precision == "fp32" or ref not in CATALOG or "+" in ref:
        return Variant(ref, "")
    from slmops.models.resolve import resolve
    from slmops.optimize import optimize
    from slmops.optimize.run import OptimizeConfig, default_output

    config = OptimizeConfig(ref, to="onnx", precision="int4")
    name = default_output(resolve(ref, store, progress=progress), config)
    found = store.find(name)
    if found is None:
        if progress:
            progress(f"building the int4 variant of {ref} once ({name}); --precision fp32 runs the original")
        try:
            found = optimize(config, store=store).record
        except SlmopsError as exc:
            if precision == "int4":
                raise
            return Variant(ref, f"could not build the int4 variant of {ref} ({exc}); running the original")
    return Variant(found.ref, f"running {found.ref}, the int4 variant of {ref} (--precision fp32 for the original)")

"""Name → factory registries for operators, samplers, detectors, datasets and prior backbones.

They feed the CLI, the docs and the contract tests: registering a component is all it takes for the
contract tests to cover it. Registration is a decorator in the component's own module::

    @register("operator", "inpainting")
    class Inpainting(LinearOperator): ...

Backbones are registered as :class:`priorshift.diffusion.backbones.Backbone` entries, one line each at the end of
that module. Trained priors are not registered here: the bundled ones are listed by ``weights/manifest.json``
(``priorshift priors``) and resolved by :func:`priorshift.diffusion.checkpoint.resolve_prior_path`.
"""

from __future__ import annotations

import importlib
from typing import Any, Callable

__all__ = ["register", "get", "names", "KINDS"]

KINDS = ("operator", "sampler", "detector", "dataset", "backbone")
_REGISTRY: dict[str, dict[str, Callable[..., Any]]] = {kind: {} for kind in KINDS}
# Modules whose import registers the components of each kind.
_PROVIDERS = {
    "operator": ("priorshift.operators",),
    "sampler": ("priorshift.samplers",),
    "detector": ("priorshift.detectors",),
    "dataset": ("priorshift.data",),
    "backbone": ("priorshift.diffusion.backbones",),
}


def _check_kind(kind: str) -> None:
    if kind not in _REGISTRY:
        raise ValueError(f"unknown registry kind {kind!r}; choose one of {', '.join(KINDS)}")


def register(kind: str, name: str):
    """Class/function decorator: make ``obj`` available as ``get(kind, name)``."""
    _check_kind(kind)

    def decorator(obj):
        if name in _REGISTRY[kind] and _REGISTRY[kind][name] is not obj:
            raise ValueError(f"{kind} {name!r} is already registered")
        _REGISTRY[kind][name] = obj
        if isinstance(obj, type) and "registered_name" not in vars(obj):
            obj.registered_name = name  # how configs and reports name a registered class
        return obj

    return decorator


def _load(kind: str) -> None:
    for module in _PROVIDERS[kind]:
        importlib.import_module(module)


def names(kind: str) -> list[str]:
    """Sorted names registered under ``kind``."""
    _check_kind(kind)
    _load(kind)
    return sorted(_REGISTRY[kind])


def get(kind: str, name: str) -> Callable[..., Any]:
    """The factory registered as ``name``; a clear ``ValueError`` listing the choices otherwise."""
    _check_kind(kind)
    _load(kind)
    try:
        return _REGISTRY[kind][name]
    except KeyError:
        choices = ", ".join(sorted(_REGISTRY[kind])) or "(none)"
        raise ValueError(f"unknown {kind} {name!r}; choose one of: {choices}") from None

"""priorshift: is the image behind these measurements from the prior's distribution — and where is it not?

``priorshift.load_prior(name_or_path)`` loads a bundled prior (``"phantom-ct-64"``, ``"fashion-mnist-32"``) or a
checkpoint; the subpackages hold operators, samplers, detectors, metrics and data.
"""

__version__ = "0.1.0"

__all__ = ["load_prior", "__version__"]

# Reachable as ``priorshift.<name>`` after a bare ``import priorshift``; each is imported on first access.
_SUBMODULES = (
    "analytic",
    "bench",
    "data",
    "detectors",
    "diffusion",
    "io",
    "metrics",
    "operators",
    "registry",
    "rng",
    "samplers",
    "types",
)


def __getattr__(name):
    # Keep ``import priorshift`` light: torch, the subpackages and the checkpoint code load on first use.
    if name == "load_prior":
        from priorshift.diffusion.checkpoint import load_prior

        return load_prior
    if name in _SUBMODULES:
        import importlib

        return importlib.import_module(f"priorshift.{name}")
    raise AttributeError(f"module 'priorshift' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__) | set(_SUBMODULES))

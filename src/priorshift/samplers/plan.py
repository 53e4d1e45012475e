"""A sampling plan: which posterior sampler, with which parameters, on which noise schedule.

Every detector that samples a posterior (KLIP, LMD, the measurement path of the image detectors) holds one
:class:`SamplingPlan` instead of a dozen loose constructor arguments, so the schedule — and the clamp of σ to
the prior's own range (:func:`priorshift.diffusion.schedules.schedule_for`) — is resolved in one place::

    plan = SamplingPlan("dps", steps=50, params={"jacobian": False, "zeta": 0.1})
    result = plan.sample(prior, operator, y, samples=2, seed=[0, 1])
"""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

from torch import Tensor

from priorshift._checks import check_int
from priorshift.diffusion.schedules import SCHEDULES, schedule_for
from priorshift.registry import get
from priorshift.types import SampleResult

__all__ = ["SamplingPlan"]

# Arguments every sampler takes from the plan or the caller; they are not sampler parameters.
_RESERVED = {"denoiser", "operator", "y", "sigmas", "samples", "seed", "hooks", "stop_after"}


@dataclass(frozen=True)
class SamplingPlan:
    """``sampler`` (a registered name) with its ``params``, ``steps`` on a ``schedule`` ("karras" or "ve")
    between ``sigma_min`` and ``sigma_max`` (``None``: the prior's own range, see :meth:`sigmas`), or on
    ``"ddpm"``: a DDPM prior's own timesteps, leading spacing as diffusers' ``DDPMScheduler`` (σ range unset).

    Validated on construction: an unknown sampler, schedule or sampler parameter raises a ``ValueError``
    naming the choices.
    """

    sampler: str = "dps"
    steps: int = 50
    schedule: str = "karras"
    sigma_min: float | None = None
    sigma_max: float | None = None
    params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.sampler, str):
            raise ValueError(f"sampler must be a registered sampler's name, got {self.sampler!r}")
        fn = get("sampler", self.sampler)
        check_int(self.steps, "steps")
        if not isinstance(self.schedule, str) or self.schedule not in SCHEDULES:
            raise ValueError(f"unknown schedule {self.schedule!r}; choose one of {', '.join(SCHEDULES)}")
        for name in ("sigma_min", "sigma_max"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or not v > 0):
                raise ValueError(f"{name} must be a number > 0, got {v!r}")
        if self.schedule == "ddpm" and (self.sigma_min is not None or self.sigma_max is not None):
            raise ValueError("schedule 'ddpm' takes its noise levels from the prior's timesteps; leave sigma_min and sigma_max unset")
        if self.sigma_min is not None and self.sigma_max is not None and not self.sigma_min < self.sigma_max:
            raise ValueError(f"need sigma_min < sigma_max, got {self.sigma_min} and {self.sigma_max}")
        accepted = {
            n for n, p in inspect.signature(fn).parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY and n not in _RESERVED
        }
        unknown = sorted(set(self.params) - accepted)
        if unknown:
            raise ValueError(
                f"sampler {self.sampler!r} takes no parameter {', '.join(map(repr, unknown))}; its parameters are {', '.join(sorted(accepted)) or '(none)'}"
            )
        defaults = inspect.signature(fn).parameters
        for k, v in self.params.items():  # a number where the default is one: not a bool, not a string
            d = defaults[k].default
            if isinstance(d, (int, float)) and not isinstance(d, bool) and (isinstance(v, bool) or not isinstance(v, (int, float))):
                raise ValueError(f"{k} must be a number (sampler {self.sampler!r}'s default {d!r}), got {v!r}")
        object.__setattr__(self, "steps", int(self.steps))
        object.__setattr__(self, "params", dict(self.params))

    @classmethod
    def coerce(cls, plan: "SamplingPlan | Mapping[str, Any] | None") -> "SamplingPlan":
        """A plan from a plan, a mapping of its fields (``{"sampler": "dps", "steps": 50, "zeta": 0.1}``: keys
        that are not fields become sampler parameters) or ``None`` (the defaults)."""
        if plan is None:
            return cls()
        if isinstance(plan, cls):
            return plan
        if not isinstance(plan, Mapping):
            raise ValueError(f"plan must be a SamplingPlan or a mapping of its fields, got {type(plan).__name__}")
        fields = {"sampler", "steps", "schedule", "sigma_min", "sigma_max", "params"}
        kw = {k: v for k, v in plan.items() if k in fields}
        extra = {k: v for k, v in plan.items() if k not in fields}
        if extra:
            kw["params"] = {**dict(kw.get("params", {})), **extra}
        return cls(**kw)

    def with_params(self, **params) -> "SamplingPlan":
        """The same plan with ``params`` updated."""
        return replace(self, params={**self.params, **params})

    @property
    def sampler_fn(self):
        return get("sampler", self.sampler)

    @property
    def likelihood_stages(self) -> tuple[str, ...]:
        """The likelihood stage labels the sampler declares (empty for a sampler with no measurement step)."""
        return tuple(getattr(self.sampler_fn, "likelihood_stages", ()))

    def sigmas(self, prior) -> Tensor:
        """The float64 ``(steps + 1,)`` schedule, σ clamped to ``prior``'s range unless given explicitly."""
        return schedule_for(prior, self.steps, self.schedule, self.sigma_min, self.sigma_max)

    def sample(self, prior, operator, y: Tensor, *, samples: int = 1, seed=None, hooks=(), stop_after: int | None = None) -> SampleResult:
        """Run the sampler: posterior samples ``x0`` (B, S, C, H, W) of ``p(x | y)``, with their NFE."""
        return self.sampler_fn(
            prior, operator, y, self.sigmas(prior), samples=samples, seed=seed, hooks=hooks, stop_after=stop_after, **self.params
        )

    def describe(self) -> dict[str, Any]:
        """Plain values for configs and reports."""
        return {"sampler": self.sampler, "steps": self.steps, "schedule": self.schedule, "sigma_min": self.sigma_min,
                "sigma_max": self.sigma_max, "params": dict(self.params)}

"""The named tasks build working detectors: every setting is valid for its prior, operator and sampler."""

import pytest
import torch

from priorshift import load_prior
from priorshift.tasks import TASKS, get_task


@pytest.mark.parametrize("name", sorted(TASKS))
def test_task_builds_klip_for_each_objective(name):
    task = get_task(name)
    prior = load_prior(task.prior)
    op = task.make_operator()
    size = prior.image_size
    y = op(torch.zeros(1, 1, size, size), seed=[0])
    for objective in task.klip_settings:
        det = task.klip(prior, op, objective=objective)
        k0, k1 = det.window_steps
        assert 0 <= k0 < k1 <= task.plan["steps"], (objective, det.window_steps)
        assert size % det.block == 0 and det.block % task.base_block == 0
        assert det.plan.sampler == task.plan["sampler"] and det.samples == task.samples
    assert op.A_adjoint(y).shape == (1, 1, size, size)
    assert task.extra["dps_zeta"] > 0


def test_unknown_task_and_objective():
    with pytest.raises(ValueError, match="unknown task"):
        get_task("mri")
    with pytest.raises(ValueError, match="objective"):
        get_task("ct").klip(None, objective="both")

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


@pytest.mark.parametrize("name", sorted(TASKS))
def test_operator_spec_builds_the_tasks_operator(name):
    """config.toml records a task's operator as this spec, trusting that it builds the same operator."""
    from priorshift.operators.spec import operator_from_spec

    task = get_task(name)
    spec = task.operator_spec()
    if spec is None:  # a mask drawn by a function: no spec
        assert any(callable(v) for v in task.operator_params.values())
        return
    assert repr(operator_from_spec(spec, load_prior(task.prior).image_size)) == repr(task.make_operator())


def test_plan_under_and_detector_settings():
    ct, blur = get_task("ct"), get_task("fmnist-blur")
    assert blur.plan_under({"steps": 3}) == {"sampler": "pigdm", "steps": 3}
    assert blur.plan_under({"sampler": "dps"}) == {"sampler": "dps", "steps": 50, "zeta": 1.5}, "DPS takes the task's DPS step"
    assert blur.plan_under({"sampler": "dps", "zeta": 0.2})["zeta"] == 0.2
    assert ct.plan_under({"sampler": "projection"}) == {"sampler": "projection", "steps": 50}, "no DPS parameter leaks into another sampler"
    assert ct.plan_under() == dict(ct.plan)
    plan = {"plan": dict(blur.plan), "samples": blur.samples}
    assert blur.detector_settings("klip") == {**plan, **blur.klip_settings["dataset"]}
    assert blur.detector_settings("klip", objective="image") == {**plan, **blur.klip_settings["image"]}
    assert blur.detector_settings("klip-multiscale") == plan
    for other in ("measurement-norm", "residual", "denoising-error", "lmd", "eigenscore"):
        assert blur.detector_settings(other) == {}, other
    assert ct.detector_settings("local-residual") == {"foreground": -0.9}, "a task's own settings for an image detector"
    assert blur.detector_settings("local-residual") == {}
    assert ct.detector_settings("klip")["foreground"] == -0.9 and ct.detector_settings("klip")["window"] == (0.40, 0.75)
    from priorshift import tasks

    det = tasks.make_detector("local-residual", get_prior_stub(), task="ct", params={"window": 3})
    assert (det.foreground, det.window) == (-0.9, 3)
    assert blur.settings_under("klip", {"block": 4, "plan": {"steps": 7}}) == {
        "plan": {"sampler": "pigdm", "steps": 7}, "samples": 2, "window": (0.35, 0.45), "block": 4}


def get_prior_stub():
    from priorshift.analytic import stationary_gaussian

    return stationary_gaussian(8)

"""The two local CT insertions of priorshift's own design (priorshift.data.inserts): exact masks, outside unchanged,
the ring's rim and core signs, the texture's zero mean and its RMS, seeds, bad input."""

import pytest
import torch

from priorshift.data import healthy_set, insert_ring_lesion, insert_texture, ring_set, texture_set


@pytest.mark.parametrize("make", [ring_set, texture_set])
def test_inserts_change_only_their_mask_and_are_seeded(make):
    h, a, b = healthy_set(3, 64, seed=5), make(3, 64, seed=5), make(3, 64, seed=5)
    assert torch.equal(a.images, b.images) and torch.equal(a.masks, b.masks)
    d = a.images - h.images
    assert torch.equal(d[~a.masks[:, None]], torch.zeros_like(d[~a.masks[:, None]]))  # outside the mask: bit-for-bit
    assert bool((a.masks.flatten(1).sum(1) > 0).all()) and bool((a.masks <= a.body_masks).all())
    assert not torch.equal(make(3, 64, seed=6).images, a.images)


def test_ring_lesion_is_brighter_on_its_rim_and_darker_inside():
    x = torch.zeros(1, 32, 32)
    y, m = insert_ring_lesion(x, rim=0.2, core=-0.15, radius=4.0, thickness=1.0, edge=0.5, seed=1)
    d = (y - x)[0]
    assert float(d.max()) == pytest.approx(0.2, abs=1e-6) and float(d.min()) == pytest.approx(-0.15, abs=1e-6)
    assert bool((d[~m] == 0).all())


def test_texture_keeps_the_mean_and_has_the_stated_rms():
    x = torch.zeros(2, 1, 32, 32)
    y, m = insert_texture(x, amplitude=0.1, radius=5.0, seed=[3, 4])
    for i in range(2):
        d = (y - x)[i, 0][m[i]].double()
        assert abs(float(d.mean())) < 1e-6 and float(d.pow(2).mean().sqrt()) == pytest.approx(0.1, rel=1e-4)


def test_inserts_refuse_bad_parameters():
    x = torch.zeros(1, 32, 32)
    with pytest.raises(ValueError, match="thickness must be in"):
        insert_ring_lesion(x, radius=2.0, thickness=3.0)
    with pytest.raises(ValueError, match="amplitude > 0"):
        insert_texture(x, amplitude=0.0)
    with pytest.raises(ValueError, match="radius must be"):
        insert_texture(x, radius=-1.0)

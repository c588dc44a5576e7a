"""Segmentation losses: the peak term sees what pixel-mean BCE misses, and nothing else."""

import pytest

torch = pytest.importorskip('torch')

from sat_seg_training.losses import bce_dice_loss, peak_loss, rank_loss  # noqa: E402
from sat_seg_training.train_config import TrainConfig  # noqa: E402


def _scene():
    """Two 64 px tiles: one with a 10x12 satellite, one empty; logits confidently negative."""
    targets = torch.zeros(2, 64, 64)
    targets[0, 20:30, 20:32] = 1.0
    logits = torch.full((2, 64, 64), -6.0)
    logits[0, 20:30, 20:32] = 4.0
    return logits, targets


def test_a_confident_false_blob_costs_what_it_costs_the_metric():
    logits, targets = _scene()
    clean = float(peak_loss(logits, targets, pixels=16, margin=4))
    blob = logits.clone()
    blob[1, 40:44, 40:44] = 5.0  # 16 px at p = 0.993 on the empty tile
    with_blob = float(peak_loss(blob, targets, pixels=16, margin=4))
    # the 16 worst background pixels of tile 1 go from softplus(-6) to softplus(5): mean over
    # the two tiles rises by about 5 / 2
    assert with_blob - clean == pytest.approx(0.5 * (5.0067 - 0.0025), abs=1e-3)
    # pixel-mean BCE hardly notices the same blob (16 of 8192 pixels)
    bce_change = float(bce_dice_loss(blob, targets, dice_weight=0) -
                       bce_dice_loss(logits, targets, dice_weight=0))
    assert bce_change < 0.02 * (with_blob - clean)


def test_the_satellites_own_edge_is_not_punished_but_a_missed_satellite_is():
    logits, targets = _scene()
    clean = float(peak_loss(logits, targets, pixels=16, margin=4))
    edge = logits.clone()
    edge[0, 30:33, 20:32] = 5.0  # a blurred rim 1-3 px outside the true mask: within margin
    assert float(peak_loss(edge, targets, pixels=16, margin=4)) == pytest.approx(clean)
    far = logits.clone()
    far[0, 50:54, 50:54] = 5.0  # the same rim moved far from the satellite
    assert float(peak_loss(far, targets, pixels=16, margin=4)) > clean + 1.0
    missed = logits.clone()
    missed[0, 20:30, 20:32] = -6.0  # the satellite not found: its best pixel costs softplus(6)
    assert float(peak_loss(missed, targets, pixels=16, margin=4)) == pytest.approx(
        clean + 0.5 * (6.0025 - 0.0181), abs=1e-3)


def test_gradient_reaches_only_the_worst_background_and_the_best_satellite_pixel():
    logits, targets = _scene()
    logits = logits + 0.01 * torch.randn(2, 64, 64, generator=torch.Generator().manual_seed(0))
    logits.requires_grad_(True)
    peak_loss(logits, targets, pixels=16, margin=4).backward()
    touched = (logits.grad != 0).flatten(1).sum(1)
    assert touched.tolist() == [16 + 1, 16]
    satellite = targets[0] > 0.5
    assert int((logits.grad[0][satellite] != 0).sum()) == 1
    assert float(logits.grad[0][satellite].sum()) < 0  # pushes the satellite's peak up


def test_fully_covered_and_empty_batches_stay_finite():
    full = torch.ones(1, 32, 32)
    logits = torch.zeros(1, 32, 32, requires_grad=True)
    value = peak_loss(logits, full, pixels=8, margin=2)
    value.backward()
    assert torch.isfinite(value) and torch.isfinite(logits.grad).all()
    empty = peak_loss(torch.zeros(3, 32, 32), torch.zeros(3, 32, 32), pixels=8)
    assert float(empty) == pytest.approx(float(torch.nn.functional.softplus(torch.tensor(0.))))


def test_peak_weight_adds_exactly_the_peak_term_and_zero_leaves_bce_dice_unchanged():
    logits, targets = _scene()
    logits = logits + torch.randn(2, 64, 64, generator=torch.Generator().manual_seed(1))
    base = bce_dice_loss(logits, targets, 3.0, 1.0)
    assert float(bce_dice_loss(logits, targets, 3.0, 1.0, peak_weight=0.0)) == float(base)
    weighted = bce_dice_loss(logits, targets, 3.0, 1.0, peak_weight=0.5, peak_pixels=32)
    assert float(weighted) == pytest.approx(
        float(base) + 0.5 * float(peak_loss(logits, targets, pixels=32)), rel=1e-6)


def test_bad_peak_settings_are_named():
    with pytest.raises(ValueError, match='peak_weight'):
        TrainConfig(steps=1, peak_weight=-1.0)
    with pytest.raises(ValueError, match='peak_pixels'):
        TrainConfig(steps=1, peak_weight=1.0, peak_pixels=0)
    with pytest.raises(ValueError, match="needs loss 'bce_dice'"):
        TrainConfig(steps=1, peak_weight=1.0, loss='dice_ce')


@pytest.mark.parametrize('margin', [0, 1, 4, 8])
def test_satellite_surroundings_is_the_square_dilation_of_the_satellite(margin):
    """The box-sum dilation agrees with a max-pool dilation, at the tile's edges too."""
    from sat_seg_training.losses import satellite_surroundings

    generator = torch.Generator().manual_seed(margin)
    targets = (torch.rand(5, 40, 48, generator=generator) > 0.985).float()
    targets[1] = 0  # an empty tile
    targets[2, 0, 0] = targets[2, -1, -1] = 0.3  # soft pixels at the corners count
    targets[3, :, 47] = 1.0  # a satellite along the right edge
    side = 2 * margin + 1
    expected = torch.nn.functional.max_pool2d((targets[:, None] > 0).float(), side, stride=1,
                                              padding=margin) > 0
    found = satellite_surroundings(targets, margin)
    assert found.shape == (5, 40 * 48) and found.dtype == torch.bool
    assert torch.equal(found, expected.flatten(1))
    assert not found[1].any()


def test_peak_loss_with_precomputed_surroundings_is_the_same():
    from sat_seg_training.losses import satellite_surroundings

    logits, targets = _scene()
    logits = logits + torch.randn(2, 64, 64, generator=torch.Generator().manual_seed(1))
    near = satellite_surroundings(targets, 4)
    assert torch.equal(peak_loss(logits, targets, pixels=16, margin=4, near=near),
                       peak_loss(logits, targets, pixels=16, margin=4))
    assert torch.equal(bce_dice_loss(logits, targets, peak_weight=0.5, peak_margin=4, near=near),
                       bce_dice_loss(logits, targets, peak_weight=0.5, peak_margin=4))


def test_the_rank_loss_compares_the_satellite_with_every_tiles_background_peak():
    logits, targets = _scene()  # satellite logit 4, background -6 everywhere: well apart
    low = float(rank_loss(logits, targets, margin=2.0))
    assert low == pytest.approx(float(torch.nn.functional.softplus(torch.tensor(2.0 - 10.0))),
                                rel=1e-5)
    # A blob in the other, empty tile at the satellite's level: that pair costs softplus(2).
    rival = logits.clone()
    rival[1, 40:44, 40:44] = 4.0
    pairs = torch.nn.functional.softplus(torch.tensor([2.0 - 10.0, 2.0 - 0.0]))
    assert float(rank_loss(rival, targets, margin=2.0)) == pytest.approx(float(pairs.mean()),
                                                                         rel=1e-5)
    # Gradient: the satellite's best pixels go up, the rival's peak down, the rest of the
    # empty tile not at all (the maxima share it where they tie).
    rival.requires_grad_(True)
    rank_loss(rival, targets, margin=2.0).backward()
    grad = rival.grad
    assert float(grad[0, 20:30, 20:32].sum()) < 0 and float(grad[1, 40:44, 40:44].min()) > 0
    outside = grad[1].clone()
    outside[40:44, 40:44] = 0
    assert float(outside.abs().max()) == 0.0
    # The satellite's own soft edge (within 8 px) is no rival.
    edge = logits.clone()
    edge[0, 31, 20:32] = 9.0
    assert float(rank_loss(edge, targets)) == pytest.approx(low, rel=1e-5)


def test_the_rank_loss_without_a_satellite_is_a_zero_with_a_graph():
    logits = torch.randn(3, 16, 16, requires_grad=True)
    loss = rank_loss(logits, torch.zeros(3, 16, 16))
    assert float(loss.detach()) == 0.0 and loss.requires_grad
    loss.backward()
    assert float(logits.grad.abs().max()) == 0.0


def test_bad_rank_settings_are_named():
    with pytest.raises(ValueError, match='rank_weight=-1.0'):
        TrainConfig(name='x', out_dir='y', steps=1, rank_weight=-1.0)
    with pytest.raises(ValueError, match='rank_margin=-0.5'):
        TrainConfig(name='x', out_dir='y', steps=1, rank_margin=-0.5)

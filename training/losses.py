"""Segmentation losses on tile logits (N, t, t) against soft targets in [0, 1] (N, t, t)."""

from __future__ import annotations

LOSSES = ('bce_dice', 'dice_ce')
PEAK_MARGIN = 8  # px: background pixels this close to a satellite pixel are not peak negatives


def bce_dice_loss(logits, targets, pos_weight: float = 1.0, dice_weight: float = 1.0,
                  peak_weight: float = 0.0, peak_pixels: int = 256,
                  peak_margin: int = PEAK_MARGIN, near=None):
    """Pixel BCE over every tile plus soft Dice over the tiles that contain satellite pixels.

    Empty tiles contribute through BCE only: Dice on an empty target rewards nothing but
    suppressing every pixel, which is the collapse FINDINGS.md describes. ``peak_weight`` > 0
    adds :func:`peak_loss` (``near``: :func:`satellite_surroundings` of ``targets``, when the
    caller has it already).
    """
    import torch
    import torch.nn.functional as F

    weight = torch.tensor(float(pos_weight), dtype=logits.dtype, device=logits.device)
    bce = F.binary_cross_entropy_with_logits(logits, targets, pos_weight=weight)
    positive = targets.flatten(1).amax(dim=1) > 0.5
    if peak_weight > 0:
        bce = bce + peak_weight * peak_loss(logits, targets, peak_pixels, peak_margin, near)
    if not bool(positive.any()) or dice_weight == 0:
        return bce
    prob = torch.sigmoid(logits[positive]).flatten(1)
    truth = targets[positive].flatten(1)
    dice = 1 - (2 * (prob * truth).sum(1) + 1) / (prob.sum(1) + truth.sum(1) + 1)
    return bce + dice_weight * dice.mean()


def satellite_surroundings(targets, margin: int = PEAK_MARGIN):
    """Return (N, t*t) bool: pixels within ``margin`` px (a square) of a satellite pixel.

    Depends on the targets alone, so one call serves every loss of a batch. A box sum through
    two cumulative sums: exact on 0/1 counts, and several times faster on a CPU than a max-pool
    dilation with a 2 * margin + 1 window.
    """
    import torch
    import torch.nn.functional as F

    with torch.no_grad():
        count = (targets > 0).float()
        if margin > 0:
            side = 2 * margin + 1
            count = F.pad(count, (margin + 1, margin)).cumsum(2)
            count = count[:, :, side:] - count[:, :, :-side]
            count = F.pad(count, (0, 0, margin + 1, margin)).cumsum(1)
            count = count[:, side:] - count[:, :-side]
        return (count > 0.5).flatten(1)


def peak_loss(logits, targets, pixels: int = 256, margin: int = PEAK_MARGIN, near=None):
    """BCE on each tile's most confident background pixels and on its best satellite pixel.

    The report's metric fails an image on one confident false component (an empty scene with
    a blob, or a blob that outranks the satellite), which pixel-mean BCE barely sees: a blob of
    a few hundred pixels is under 1 % of a tile. Per tile this takes the ``pixels`` background
    pixels (farther than ``margin`` px from any pixel with satellite in it, so the satellite's
    own soft edge is not punished; ``near`` gives those pixels precomputed, from
    :func:`satellite_surroundings`) with the highest logits and pushes them to 0, and, on
    tiles with a satellite, pushes the highest satellite logit to 1. Mean over tiles.
    """
    import torch
    import torch.nn.functional as F

    if near is None:
        near = satellite_surroundings(targets, margin)
    flat = logits.flatten(1)
    k = max(1, min(int(pixels), flat.shape[1]))
    background = flat.masked_fill(near, float('-inf')).topk(k, dim=1).values
    valid = torch.isfinite(background)
    loss = (F.softplus(background.clamp_min(-1e4)) * valid).sum(1) / valid.sum(1).clamp_min(1)
    truth = targets.flatten(1) > 0.5
    best = flat.masked_fill(~truth, float('-inf')).amax(1).clamp_min(-1e4)
    loss = loss + torch.where(truth.any(1), F.softplus(-best), torch.zeros_like(best))
    return loss.mean()


def rank_loss(logits, targets, margin: float = 2.0, near=None):
    """Softplus hinge of each satellite's best logit over every tile's top background logit.

    With one detection per frame, a satellite is missed when a peak anywhere else in the
    frame, mostly in another tile (on 320 gray validation scenes at 512, 96 of the 112 peaks
    that outranked the satellite), is higher. :func:`peak_loss` pushes each tile's logits
    toward fixed targets; this compares them across the batch: for every tile with a
    satellite (its best satellite logit s) and every tile (its highest logit farther than
    ``PEAK_MARGIN`` px from any satellite pixel, b; ``near`` as in :func:`peak_loss`), the
    mean of softplus(margin - (s - b)). A zero that keeps the graph when the batch has no
    satellite.
    """
    import torch
    import torch.nn.functional as F

    if near is None:
        near = satellite_surroundings(targets)
    flat = logits.flatten(1)
    truth = targets.flatten(1) > 0.5
    positive = truth.any(1)
    background = flat.masked_fill(near, float('-inf')).amax(1)
    rival = torch.isfinite(background)
    if not bool(positive.any()) or not bool(rival.any()):
        return flat.sum() * 0.0
    best = flat.masked_fill(~truth, float('-inf')).amax(1)[positive]
    return F.softplus(margin - (best[:, None] - background[rival][None, :])).mean()


def dice_ce_loss(logits, targets):
    """Return the report's loss, ``monai.losses.DiceCELoss(sigmoid=True, squared_pred=True)``."""
    from monai.losses import DiceCELoss

    loss = DiceCELoss(sigmoid=True, squared_pred=True, reduction='mean')
    return loss(logits[:, None], targets[:, None])


def segmentation_loss(name: str, logits, targets, pos_weight: float = 1.0,
                      dice_weight: float = 1.0, peak_weight: float = 0.0,
                      peak_pixels: int = 256, near=None):
    """Dispatch to a named loss (see LOSSES); ``peak_*`` and ``near`` apply to 'bce_dice' only."""
    if name == 'bce_dice':
        return bce_dice_loss(logits, targets, pos_weight, dice_weight, peak_weight, peak_pixels,
                             near=near)
    if name == 'dice_ce':
        return dice_ce_loss(logits, targets)
    raise ValueError('loss=%r is not one of %s' % (name, LOSSES))

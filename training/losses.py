"""Segmentation losses on tile logits (N, t, t) against soft targets in [0, 1] (N, t, t)."""

from __future__ import annotations

LOSSES = ('bce_dice', 'dice_ce')


def bce_dice_loss(logits, targets, pos_weight: float = 1.0, dice_weight: float = 1.0,
                  peak_weight: float = 0.0, peak_pixels: int = 256, peak_margin: int = 8):
    """Pixel BCE over every tile plus soft Dice over the tiles that contain satellite pixels.

    Empty tiles contribute through BCE only: Dice on an empty target rewards nothing but
    suppressing every pixel, which is the collapse FINDINGS.md describes. ``peak_weight`` > 0
    adds :func:`peak_loss`.
    """
    import torch
    import torch.nn.functional as F

    weight = torch.tensor(float(pos_weight), dtype=logits.dtype, device=logits.device)
    bce = F.binary_cross_entropy_with_logits(logits, targets, pos_weight=weight)
    positive = targets.flatten(1).amax(dim=1) > 0.5
    if peak_weight > 0:
        bce = bce + peak_weight * peak_loss(logits, targets, peak_pixels, peak_margin)
    if not bool(positive.any()) or dice_weight == 0:
        return bce
    prob = torch.sigmoid(logits[positive]).flatten(1)
    truth = targets[positive].flatten(1)
    dice = 1 - (2 * (prob * truth).sum(1) + 1) / (prob.sum(1) + truth.sum(1) + 1)
    return bce + dice_weight * dice.mean()


def peak_loss(logits, targets, pixels: int = 256, margin: int = 8):
    """BCE on each tile's most confident background pixels and on its best satellite pixel.

    The report's metric fails an image on one confident false component (an empty scene with
    a blob, or a blob that outranks the satellite), which pixel-mean BCE barely sees: a blob of
    a few hundred pixels is under 1 % of a tile. Per tile this takes the ``pixels`` background
    pixels (farther than ``margin`` px from any pixel with satellite in it, so the satellite's
    own soft edge is not punished) with the highest logits and pushes them to 0, and, on tiles
    with a satellite, pushes the highest satellite logit to 1. Mean over tiles.
    """
    import torch
    import torch.nn.functional as F

    flat = logits.flatten(1)
    near = targets[:, None] > 0
    if margin > 0:
        side = 2 * margin + 1  # a square dilation as two 1-D passes (one 2-D pool is 10x slower)
        near = F.max_pool2d(near.float(), (1, side), stride=1, padding=(0, margin))
        near = F.max_pool2d(near, (side, 1), stride=1, padding=(margin, 0)) > 0
    near = near.flatten(1)
    k = max(1, min(int(pixels), flat.shape[1]))
    background = flat.masked_fill(near, float('-inf')).topk(k, dim=1).values
    valid = torch.isfinite(background)
    loss = (F.softplus(background.clamp_min(-1e4)) * valid).sum(1) / valid.sum(1).clamp_min(1)
    truth = targets.flatten(1) > 0.5
    best = flat.masked_fill(~truth, float('-inf')).amax(1).clamp_min(-1e4)
    loss = loss + torch.where(truth.any(1), F.softplus(-best), torch.zeros_like(best))
    return loss.mean()


def dice_ce_loss(logits, targets):
    """Return the report's loss, ``monai.losses.DiceCELoss(sigmoid=True, squared_pred=True)``."""
    from monai.losses import DiceCELoss

    loss = DiceCELoss(sigmoid=True, squared_pred=True, reduction='mean')
    return loss(logits[:, None], targets[:, None])


def segmentation_loss(name: str, logits, targets, pos_weight: float = 1.0,
                      dice_weight: float = 1.0, peak_weight: float = 0.0,
                      peak_pixels: int = 256):
    """Dispatch to a named loss (see LOSSES); ``peak_*`` apply to 'bce_dice' only."""
    if name == 'bce_dice':
        return bce_dice_loss(logits, targets, pos_weight, dice_weight, peak_weight, peak_pixels)
    if name == 'dice_ce':
        return dice_ce_loss(logits, targets)
    raise ValueError('loss=%r is not one of %s' % (name, LOSSES))

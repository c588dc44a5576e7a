"""Segmentation losses on tile logits (N, t, t) against soft targets in [0, 1] (N, t, t)."""

from __future__ import annotations

LOSSES = ('bce_dice', 'dice_ce')


def bce_dice_loss(logits, targets, pos_weight: float = 1.0, dice_weight: float = 1.0):
    """Pixel BCE over every tile plus soft Dice over the tiles that contain satellite pixels.

    Empty tiles contribute through BCE only: Dice on an empty target rewards nothing but
    suppressing every pixel, which is the collapse FINDINGS.md describes.
    """
    import torch
    import torch.nn.functional as F

    weight = torch.tensor(float(pos_weight), dtype=logits.dtype, device=logits.device)
    bce = F.binary_cross_entropy_with_logits(logits, targets, pos_weight=weight)
    positive = targets.flatten(1).amax(dim=1) > 0.5
    if not bool(positive.any()) or dice_weight == 0:
        return bce
    prob = torch.sigmoid(logits[positive]).flatten(1)
    truth = targets[positive].flatten(1)
    dice = 1 - (2 * (prob * truth).sum(1) + 1) / (prob.sum(1) + truth.sum(1) + 1)
    return bce + dice_weight * dice.mean()


def dice_ce_loss(logits, targets):
    """Return the report's loss, ``monai.losses.DiceCELoss(sigmoid=True, squared_pred=True)``."""
    from monai.losses import DiceCELoss

    loss = DiceCELoss(sigmoid=True, squared_pred=True, reduction='mean')
    return loss(logits[:, None], targets[:, None])


def segmentation_loss(name: str, logits, targets, pos_weight: float = 1.0,
                      dice_weight: float = 1.0):
    """Dispatch to a named loss (see LOSSES)."""
    if name == 'bce_dice':
        return bce_dice_loss(logits, targets, pos_weight, dice_weight)
    if name == 'dice_ce':
        return dice_ce_loss(logits, targets)
    raise ValueError('loss=%r is not one of %s' % (name, LOSSES))

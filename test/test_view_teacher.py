"""The mirror-view distillation (view_teacher_weight): its views, its target, a run with it."""

from pathlib import Path

import numpy as np
import pytest
from test_train import assert_resumes_exactly, first_step_records, micro_config

from sat_seg_training.train import mirror_views, train, view_teacher_loss
from sat_seg_training.train_config import TrainConfig


def test_each_view_is_the_segmenters_flip_and_its_own_inverse():
    import torch

    batch = torch.arange(4 * 2 * 3 * 5, dtype=torch.float32).reshape(4, 2, 3, 5)
    views = torch.tensor([0, 1, 2, 3])
    mirrored = mirror_views(batch, views).numpy()
    plain = batch.numpy()
    np.testing.assert_array_equal(mirrored[0], plain[0])
    np.testing.assert_array_equal(mirrored[1], plain[1][..., ::-1])
    np.testing.assert_array_equal(mirrored[2], plain[2][..., ::-1, :])
    np.testing.assert_array_equal(mirrored[3], plain[3][..., ::-1, ::-1])
    assert torch.equal(mirror_views(mirror_views(batch, views), views), batch)
    assert torch.equal(batch, torch.arange(120, dtype=torch.float32).reshape(4, 2, 3, 5))


def test_the_target_is_the_teachers_view_mirrored_back():
    import torch

    torch.manual_seed(0)
    pixels = torch.randn(8, 3, 6, 6)
    ramp = torch.linspace(-2.0, 2.0, 6).expand(6, 6)  # a teacher that is not flip-equivariant

    def teacher(batch):
        return batch[:, 0] + ramp

    views = torch.tensor([0, 1, 2, 3, 3, 2, 1, 0])
    # At logits 0 the gradient of the mean cross-entropy is (0.5 - target) / pixel count.
    low_res = torch.zeros(8, 6, 6, requires_grad=True)
    view_teacher_loss(teacher, low_res, pixels, views).backward()
    target = 0.5 - low_res.grad * low_res.numel()
    for row, dims in enumerate([[], [-1], [-2], [-2, -1], [-2, -1], [-2], [-1], []]):
        flipped = torch.flip(pixels[row:row + 1], dims) if dims else pixels[row:row + 1]
        expected = torch.sigmoid(teacher(flipped))
        expected = torch.flip(expected, dims) if dims else expected
        np.testing.assert_allclose(target[row].numpy(), expected[0].numpy(), atol=1e-5)
    # The same tiles under the identity view: a different target, so the view matters.
    low_res.grad = None
    view_teacher_loss(teacher, low_res, pixels, torch.zeros(8, dtype=torch.long)).backward()
    assert float((0.5 - low_res.grad * low_res.numel() - target).abs().max()) > 0.1


def test_an_equivariant_teacher_matched_exactly_leaves_no_gradient():
    import torch

    torch.manual_seed(1)
    pixels = torch.randn(5, 3, 8, 8)
    low_res = pixels[:, 0].clone().requires_grad_(True)
    loss = view_teacher_loss(lambda batch: batch[:, 0], low_res, pixels,
                             torch.tensor([0, 1, 2, 3, 1]))
    loss.backward()
    assert float(low_res.grad.abs().max()) < 1e-7


def test_settings_it_cannot_run_with_are_refused_by_name(tmp_path):
    with pytest.raises(ValueError, match='view_teacher_weight=-1.0 must be >= 0'):
        micro_config(tmp_path, view_teacher_weight=-1.0)
    with pytest.raises(ValueError, match='needs stage .sam.*init_from'):
        micro_config(tmp_path, view_teacher_weight=1.0, stage='sam',
                     train_prompt='inference')
    assert TrainConfig.__dataclass_fields__['view_teacher_weight'].default == 0.0


@pytest.mark.parametrize('pipeline', ['numpy', 'torch'])
def test_a_run_with_the_view_teacher_adds_its_loss_and_resumes_exactly(tmp_path, pipeline):
    common = {'stage': 'sam', 'train_prompt': 'inference', 'prompt_mode': 'box',
              'positive_fraction': 0.5, 'pipeline': pipeline}
    start = micro_config(tmp_path / 'start', steps=3, **common)
    train(start, progress=False)
    init = str(Path(start.out_dir) / 'last.pt')
    first = first_step_records(tmp_path, lambda folder, weight: micro_config(
        folder, steps=1, init_from=init, view_teacher_weight=weight, **common))
    # Same start, same batch: the term is the cross-entropy of soft targets (> 0), and the
    # logged loss gained exactly that; a run without it logs no term.
    assert 'view_teacher' not in first[0.0]
    assert first[1.0]['view_teacher'] > 1e-3
    assert first[1.0]['loss'] - first[0.0]['loss'] == pytest.approx(
        first[1.0]['view_teacher'], abs=1e-5)
    # The frozen model comes from init_from again when the run resumes.
    assert_resumes_exactly(tmp_path, lambda folder: micro_config(
        folder, steps=6, init_from=init, view_teacher_weight=1.0, **common))

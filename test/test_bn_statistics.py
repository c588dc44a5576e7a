"""BatchNorm running statistics under concurrent CPU workers: the whole batch's, every time."""

import copy

import numpy as np
import pytest

from sat_seg_training.bn_statistics import BatchStatistics, combine

torch = pytest.importorskip('torch')


def cnn_and_batch():
    from sat_seg_training.models import build_model

    model = build_model('test-cnn', seed=3).train()
    generator = torch.Generator().manual_seed(5)
    # A batch whose two halves differ, so the order of the halves' updates would show.
    pixels = torch.randn(8, 3, 64, 64, generator=generator)
    pixels[4:] = pixels[4:] * 2.0 + 1.0
    return model, pixels


def one_step(model, pixels, workers, statistics=None, fail=False):
    from sat_seg_training.train import _forward_backward

    def chunk_loss(rows, scale):
        embeddings = model.vision_encoder(pixels[rows])[0]
        if fail and rows.start > 0:
            raise RuntimeError('a chunk failed')
        value = embeddings.float().pow(2).mean()
        (value * scale).backward()
        return value.detach()

    return _forward_backward(chunk_loss, len(pixels), workers, threads=1, statistics=statistics)


def buffers(model):
    return {name: value.clone() for name, value in model.named_buffers()
            if 'running_' in name or 'num_batches' in name}


def test_combine_gives_the_union_mean_and_unbiased_variance():
    values = np.random.default_rng(0).normal(size=(2, 37)) * [[1.0], [3.0]] + [[0.0], [2.0]]
    parts = [(37, torch.tensor(part.mean(), dtype=torch.float64),
              torch.tensor(((part - part.mean()) ** 2).sum(), dtype=torch.float64))
             for part in values]
    count, mean, variance = combine(parts)
    assert count == 74
    assert float(mean) == pytest.approx(values.mean(), abs=1e-12)
    assert float(variance) == pytest.approx(values.var(ddof=1), abs=1e-12)


def layer_inputs(model, pixels, halves):
    """Return, per BatchNorm layer, its inputs over ``halves`` run in turn (train mode)."""
    model = copy.deepcopy(model)
    layers = BatchStatistics([model]).layers
    seen = {index: [] for index in range(len(layers))}
    for index, layer in enumerate(layers):
        layer.register_forward_pre_hook(
            lambda layer, inputs, index=index: seen[index].append(inputs[0].detach().clone()))
    with torch.no_grad():
        for rows in halves:
            model.vision_encoder(pixels[rows])
    return layers, seen


def test_two_workers_store_the_whole_batch_statistics_once():
    """A two-worker step updates each layer once, from the union of the chunks' inputs.

    The first layer sees the same inputs as with one worker, so it stores what one worker
    would; deeper layers see each chunk normalised by its own statistics upstream.
    """
    model, pixels = cnn_and_batch()
    single, split = copy.deepcopy(model), copy.deepcopy(model)
    one_step(single, pixels, workers=1)
    statistics = BatchStatistics([split])
    assert len(statistics) > 5  # the CNN encoder's BatchNorm layers
    one_step(split, pixels, workers=2, statistics=statistics)
    layers, seen = layer_inputs(model, pixels, [slice(0, 4), slice(4, 8)])
    before = BatchStatistics([model]).layers
    after = BatchStatistics([split]).layers
    alone = BatchStatistics([single]).layers
    for index, (old, new) in enumerate(zip(before, after)):
        inputs = torch.cat(seen[index]).double()
        dims = [0] + list(range(2, inputs.dim()))
        variance, mean = torch.var_mean(inputs, dim=dims, correction=1)
        m = old.momentum
        torch.testing.assert_close(new.running_mean, ((1 - m) * old.running_mean.double()
                                                      + m * mean).float(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(new.running_var, ((1 - m) * old.running_var.double()
                                                     + m * variance).float(), rtol=1e-5,
                                   atol=1e-6)
        assert int(new.num_batches_tracked) == int(old.num_batches_tracked) + 1
        assert new.momentum == old.momentum
        assert not torch.equal(new.running_mean, old.running_mean)
    torch.testing.assert_close(after[0].running_mean, alone[0].running_mean, rtol=1e-5,
                               atol=1e-6)
    torch.testing.assert_close(after[0].running_var, alone[0].running_var, rtol=1e-5, atol=1e-6)


def test_two_worker_steps_repeat_bit_for_bit():
    model, pixels = cnn_and_batch()
    results = []
    for _ in range(3):
        trained = copy.deepcopy(model)
        statistics = BatchStatistics([trained])
        for _ in range(3):
            one_step(trained, pixels, workers=2, statistics=statistics)
        results.append(buffers(trained))
    for other in results[1:]:
        for name in results[0]:
            assert torch.equal(results[0][name], other[name]), name


def test_a_failed_step_leaves_the_statistics_as_they_were():
    model, pixels = cnn_and_batch()
    before = buffers(model)
    momenta = [layer.momentum for layer in BatchStatistics([model]).layers]
    statistics = BatchStatistics([model])
    with pytest.raises(RuntimeError, match='a chunk failed'):
        one_step(model, pixels, workers=2, statistics=statistics, fail=True)
    after = buffers(model)
    for name in before:
        assert torch.equal(before[name], after[name]), name
    assert [layer.momentum for layer in statistics.layers] == momenta
    assert all('forward' not in vars(layer) for layer in statistics.layers)


def test_layers_outside_a_step_behave_as_usual():
    """Single-worker steps and validation: the layers run and update as they always did."""
    model, pixels = cnn_and_batch()
    plain = copy.deepcopy(model)
    statistics = BatchStatistics([model])
    one_step(model, pixels, workers=1)
    one_step(plain, pixels, workers=1)
    for name, value in buffers(plain).items():
        assert torch.equal(value, buffers(model)[name]), name
    one_step(model, pixels, workers=2, statistics=statistics)
    assert all('forward' not in vars(layer) for layer in statistics.layers)
    copied = copy.deepcopy(model)  # e.g. export: no trace of the step in the copy
    assert all('forward' not in vars(layer) for layer in BatchStatistics([copied]).layers)

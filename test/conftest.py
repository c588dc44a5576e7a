"""Shared fixtures: small, real SAM-architecture models built in the test session."""

import os

import pytest

# Tests must not fight over the two cores or print weight-loading progress bars.
os.environ.setdefault('OMP_NUM_THREADS', '2')
os.environ.setdefault('HF_HUB_OFFLINE', '1')
os.environ.setdefault('TRANSFORMERS_VERBOSITY', 'error')


@pytest.fixture(scope='session')
def tiny_model_dir(tmp_path_factory):
    """Build a 256-input SamModel (random weights) without ``sat_seg.json``."""
    from sat_seg_ros.testing import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp('tiny_model'), image_size=256, seed=0)


@pytest.fixture(scope='session')
def exported_model_dir(tiny_model_dir, tmp_path_factory):
    """Copy the tiny model and export its dynamic-batch ONNX graph beside it (read-only use)."""
    import shutil

    from sat_seg_training.export import export_model

    folder = tmp_path_factory.mktemp('exported') / 'model'
    shutil.copytree(tiny_model_dir, folder)
    export_model(folder, static_batch=None, verify=False)
    return folder


def _cnn_model_folder(tmp_path_factory, architecture):
    """Return a 256-input CNN-encoder model folder (random weights, non-trivial BatchNorm)."""
    import torch

    from sat_seg_ros.config import write_model_info
    from sat_seg_training.models import build_model

    model = build_model(architecture, seed=3, image_size=256)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
                module.weight.uniform_(0.5, 1.5)
    folder = tmp_path_factory.mktemp(architecture) / 'model'
    model.save_pretrained(folder)
    write_model_info(folder, {'prompt_mode': 'box', 'model_size': 512, 'tile_size': 256,
                              'threshold': 0.5})
    return folder


@pytest.fixture(scope='session')
def cnn_model_dir(tmp_path_factory):
    """Return a 256-input test-cnn model folder (random weights, non-trivial BatchNorm)."""
    return _cnn_model_folder(tmp_path_factory, 'test-cnn')


@pytest.fixture(scope='session')
def cnn_fine_model_dir(tmp_path_factory):
    """Return the same for test-cnn-fine (a stride-4 block and the stride-4 lateral)."""
    return _cnn_model_folder(tmp_path_factory, 'test-cnn-fine')


@pytest.fixture(scope='session')
def cnn_hq_model_dir(tmp_path_factory):
    """Return the same for test-cnn-hq (test-cnn-fine with stride-2 mask features)."""
    return _cnn_model_folder(tmp_path_factory, 'test-cnn-hq')


@pytest.fixture(scope='session')
def small_dataset(tmp_path_factory):
    """Write three 250x200 noise images in the dataset layout: two with a satellite mask."""
    import numpy as np

    from sat_seg_training.dataset import DatasetWriter

    root = tmp_path_factory.mktemp('eval_set')
    rng = np.random.default_rng(3)
    with DatasetWriter(root) as writer:
        for index in range(3):
            image = rng.integers(0, 255, (200, 250), dtype=np.uint8)
            mask = np.zeros((200, 250), bool)
            if index < 2:
                mask[40 + index * 50:80 + index * 50, 60:120] = True
                writer.add('img%d.png' % index, image, mask=mask)
            else:
                writer.add('img%d.png' % index, image)
    return root

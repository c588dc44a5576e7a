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

    from sat_seg_ros.training.export import export_model

    folder = tmp_path_factory.mktemp('exported') / 'model'
    shutil.copytree(tiny_model_dir, folder)
    export_model(folder, static_batch=None, verify=False)
    return folder

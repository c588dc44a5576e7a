"""ONNX export: TensorRT-8.2-compatible graphs (ops, opset, dtypes) that match torch."""

import io
import json
import shutil

import numpy as np
import onnx
from onnx import helper, numpy_helper, TensorProto
from onnx.reference import ReferenceEvaluator
import pytest

from sat_seg_ros.backends import INPUT_NAME, OUTPUT_NAME
from sat_seg_ros.backends.engine_cache import ONNX_OPSET
from sat_seg_training import export

STATIC_BATCH = 4


@pytest.fixture(scope='module')
def exported(tiny_model_dir, tmp_path_factory):
    """Export the tiny model with a dynamic-batch and a static-batch (4) graph."""
    model_dir = tmp_path_factory.mktemp('export') / 'model'
    shutil.copytree(tiny_model_dir, model_dir)
    summary = export.export_model(model_dir, static_batch=STATIC_BATCH, verify=True,
                                  tolerance=1e-4)
    return model_dir, {item['batch']: item for item in summary}


def test_files_are_named_by_size_prompt_and_batch(exported):
    model_dir, summary = exported
    assert sorted(path.name for path in model_dir.glob('*.onnx')) == [
        'sat_seg_s256_grid4_b4.onnx', 'sat_seg_s256_grid4_dyn.onnx']
    assert set(summary) == {'dynamic', STATIC_BATCH}


@pytest.mark.parametrize('batch', ['dynamic', STATIC_BATCH])
def test_graph_is_tensorrt_82_compatible(exported, batch):
    _, summary = exported
    model = onnx.load(summary[batch]['path'])
    onnx.checker.check_model(model, full_check=True)
    assert [entry.version for entry in model.opset_import if entry.domain in ('', 'ai.onnx')] \
        == [ONNX_OPSET] and ONNX_OPSET <= 13
    ops = {node.op_type for node in model.graph.node}
    assert ops <= export.TENSORRT_82_OPS
    assert not ops & {'LayerNormalization', 'Einsum', 'Mod', 'OneHot', 'NonZero', 'CumSum',
                      'Range'}
    # One float32 input and output with the agreed names; the prompt is baked in.
    assert [value.name for value in model.graph.input] == [INPUT_NAME]
    assert [value.name for value in model.graph.output] == [OUTPUT_NAME]
    for value in list(model.graph.input) + list(model.graph.output):
        assert value.type.tensor_type.elem_type == TensorProto.FLOAT
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [dim.dim_value for dim in dims[1:]] == [3, 256, 256]
    if batch == 'dynamic':
        assert dims[0].dim_param == 'batch'
        # Only the batch dimension is still computed at run time.
        assert sum(node.op_type == 'Shape' for node in model.graph.node) <= 4
    else:
        assert dims[0].dim_value == STATIC_BATCH
        assert 'Shape' not in ops
    for node in model.graph.node:
        if node.op_type == 'Cast':
            assert helper.get_attribute_value(node.attribute[0]) not in (
                TensorProto.INT64, TensorProto.DOUBLE)
    assert export.check_tensorrt_compatible(model, static=batch != 'dynamic') == []
    meta = {entry.key: entry.value for entry in model.metadata_props}
    assert meta['sat_seg.prompt_mode'] == 'grid' and meta['sat_seg.grid_points'] == '4'
    assert meta['sat_seg.input_size'] == '256' and len(meta['sat_seg.weights_sha256']) == 64


def test_onnx_matches_torch(exported):
    _, summary = exported
    for item in summary.values():
        assert item['max_abs_diff'] < 1e-4


def test_checker_flags_a_raw_trace(tiny_model_dir):
    """Without folding, the trace holds ops TensorRT 8.2 lacks: the check must say so."""
    predictor, size = export.load_predictor(tiny_model_dir, 'grid', 4)
    raw = export.torch_export(predictor, size, None)
    problems = '\n'.join(export.check_tensorrt_compatible(raw, static=False))
    assert 'Mod' in problems and 'Einsum' in problems
    assert 'casts to INT64' in problems


@pytest.mark.filterwarnings('ignore::DeprecationWarning')
def test_checker_flags_opset_17_layer_norm():
    import torch

    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 1), torch.nn.LayerNorm(4))
    buffer = io.BytesIO()
    torch.onnx.export(model, (torch.zeros(1, 3, 2, 4),), buffer, input_names=[INPUT_NAME],
                      output_names=[OUTPUT_NAME], opset_version=17, dynamo=False)
    problems = '\n'.join(export.check_tensorrt_compatible(
        onnx.load_from_string(buffer.getvalue()), static=True))
    assert 'LayerNormalization' in problems and 'opset 17' in problems


def test_einsum_becomes_matmul():
    rng = np.random.default_rng(0)
    data = rng.normal(size=(2, 3, 4, 5)).astype(np.float32)
    for equation, weight_shape in (('bhwc,hkc->bhwk', (3, 6, 5)),
                                   ('bhwc,wkc->bhwk', (4, 6, 5))):
        weight = rng.normal(size=weight_shape).astype(np.float32)
        graph = helper.make_graph(
            [helper.make_node('Einsum', ['x', 'w'], ['y'], equation=equation)], 'g',
            [helper.make_tensor_value_info('x', TensorProto.FLOAT, data.shape)],
            [helper.make_tensor_value_info('y', TensorProto.FLOAT, None)],
            [numpy_helper.from_array(weight, 'w')])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid('', ONNX_OPSET)])
        export.einsum_to_matmul(model)
        ops = [node.op_type for node in model.graph.node]
        assert ops == ['Transpose', 'MatMul', 'Transpose']
        result = ReferenceEvaluator(model).run(None, {'x': data})[0]
        np.testing.assert_allclose(result, np.einsum(equation, data, weight), rtol=1e-5,
                                   atol=1e-5)


def test_export_command(tiny_model_dir, tmp_path, capsys, caplog):
    from sat_seg_ros.cli import main

    caplog.set_level('INFO', logger=export.LOG.name)
    assert main(['export', '--model', str(tiny_model_dir), '--out', str(tmp_path),
                 '--prompt-mode', 'box', '--static-batch', '0', '--no-verify']) == 0
    # Without the comparison the log says so, rather than a difference of None.
    assert any(message.startswith('wrote %s (' % (tmp_path / 'sat_seg_s256_box_dyn.onnx'))
               and message.endswith('nodes, not compared with torch)')
               for message in caplog.messages)
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed['path'] == str(tmp_path / 'sat_seg_s256_box_dyn.onnx')
    assert [path.name for path in tmp_path.glob('*.onnx')] == ['sat_seg_s256_box_dyn.onnx']


def test_export_refuses_bad_arguments(tiny_model_dir, tmp_path):
    with pytest.raises(ValueError, match='prompt_mode'):
        export.export_model(tiny_model_dir, tmp_path, prompt_mode='points')
    with pytest.raises(ValueError, match='static_batch'):
        export.export_model(tiny_model_dir, tmp_path, static_batch=0)
    with pytest.raises(ValueError, match='nothing to export'):
        export.export_model(tiny_model_dir, tmp_path, static_batch=None, dynamic=False)

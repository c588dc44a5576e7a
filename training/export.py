"""Export a model's tile predictor to ONNX graphs that ONNX Runtime and TensorRT 8.2+ can run.

The exported graph is :class:`~sat_seg_ros.backends.torch_backend.SamTilePredictor`: one input
``pixel_values`` (N, 3, S, S) float32 of pre-processed tiles, one output ``low_res_logits``
(N, m, m) float32; the prompt is fixed inside as constants. Two variants per model and prompt:
a static batch (N fixed) and a dynamic batch (N free).

TensorRT 8.2 (JetPack 4.6, the newest a Jetson TX2 gets) parses ONNX up to opset 13, has no
``LayerNormalization`` (an opset-17 op), ``Mod``, ``OneHot``, ``NonZero`` or ``Trilu``, and
handles int64 only as shape arithmetic it narrows to int32. So the export uses opset 13, eager
attention (torch's fused attention only exports from opset 14), then folds every subgraph that
does not depend on the pixels into constants (the prompt path, relative-position tables, shape
arithmetic on static dimensions), and rewrites ``Einsum`` with a constant operand into
``MatMul`` (Einsum only arrived in TensorRT 8.2 and has restrictions there).
:func:`check_tensorrt_compatible` verifies the result op by op and dtype by dtype.

Offline code: imports torch, transformers and onnx.
"""

from __future__ import annotations

import io
import logging
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence
import warnings

import numpy as np

from sat_seg_ros.backends import INPUT_NAME, OUTPUT_NAME
from sat_seg_ros.backends.engine_cache import file_sha256, onnx_file_name, ONNX_OPSET
from sat_seg_ros.config import atomic_write_bytes, load_model_info, PROMPT_MODES

LOG = logging.getLogger(__name__)

#: ONNX ops the exported graphs may contain: all imported by TensorRT 8.2's ONNX parser
#: (onnx-tensorrt release/8.2-GA docs/operators.md) and by ONNX Runtime.
TENSORRT_82_OPS = frozenset((
    'Abs', 'Add', 'And', 'ArgMax', 'AveragePool', 'BatchNormalization', 'Cast', 'Ceil', 'Clip',
    'Concat', 'Constant', 'ConstantOfShape', 'Conv', 'ConvTranspose', 'Cos', 'Div', 'Equal',
    'Erf', 'Exp', 'Expand', 'Flatten', 'Floor', 'Gather', 'Gemm', 'GlobalAveragePool',
    'Greater', 'Identity', 'LeakyRelu', 'Less', 'Log', 'MatMul', 'Max', 'MaxPool', 'Min', 'Mul',
    'Neg', 'Not', 'Pad', 'Pow', 'Range', 'Reciprocal', 'ReduceMax', 'ReduceMean', 'ReduceSum',
    'Relu', 'Reshape', 'Resize', 'Shape', 'Sigmoid', 'Sin', 'Slice', 'Softmax', 'Split', 'Sqrt',
    'Squeeze', 'Sub', 'Tanh', 'Tile', 'Transpose', 'Unsqueeze', 'Where'))
#: Ops that broadcast a constant to the batch; folding them when their output is this much
#: larger than their inputs would store per-batch copies in the file.
BROADCAST_OPS = frozenset(('Expand', 'Tile', 'ConstantOfShape'))
MAX_FOLD_GROWTH_BYTES = 1 << 16
DEFAULT_STATIC_BATCH = 16


class ExportError(RuntimeError):
    """The graph could not be exported or is not runnable by the targets (message says why)."""


def load_predictor(model_dir: os.PathLike | str, prompt_mode: str, grid_points: int):
    """Return (SamTilePredictor in eval mode with eager attention, input size S)."""
    from transformers import SamModel
    from transformers.utils import logging as hf_logging

    from sat_seg_ros.backends.torch_backend import SamTilePredictor
    from sat_seg_ros.modeling import load_sam_model, model_type

    hf_logging.disable_progress_bar()
    # torch's fused scaled_dot_product_attention has no ONNX symbolic below opset 14; the
    # CNN-encoder family's decoder always runs eager attention.
    if model_type(model_dir) == 'sam':
        sam = SamModel.from_pretrained(str(model_dir), attn_implementation='eager').eval()
    else:
        sam = load_sam_model(model_dir)
    predictor = SamTilePredictor(sam, prompt_mode, grid_points).eval()
    return predictor, int(sam.config.vision_config.image_size)


def torch_export(predictor, input_size: int, batch: Optional[int], opset: int = ONNX_OPSET):
    """Trace ``predictor`` with the legacy exporter; return the ModelProto (None: dynamic)."""
    import onnx
    import torch

    example = torch.zeros((batch or 2, 3, input_size, input_size), dtype=torch.float32)
    buffer = io.BytesIO()
    dynamic_axes = None
    if batch is None:
        dynamic_axes = {INPUT_NAME: {0: 'batch'}, OUTPUT_NAME: {0: 'batch'}}
    with warnings.catch_warnings(), torch.no_grad():
        # The tracer warns about Python ints taken from tensor shapes; with fixed tile sizes
        # those are constants by design.
        warnings.simplefilter('ignore')
        torch.onnx.export(predictor, (example,), buffer, input_names=[INPUT_NAME],
                          output_names=[OUTPUT_NAME], opset_version=opset, dynamo=False,
                          do_constant_folding=True, dynamic_axes=dynamic_axes)
    return onnx.load_from_string(buffer.getvalue())


def _type_map(model) -> Dict[str, object]:
    """Return name -> TypeProto from ONNX shape inference with data propagation."""
    import onnx

    graph = onnx.shape_inference.infer_shapes(model, data_prop=True).graph
    return {value.name: value.type
            for value in list(graph.value_info) + list(graph.input) + list(graph.output)}


def _dims(type_proto) -> Optional[List[Optional[int]]]:
    """Return the dims of a tensor TypeProto (None where unknown), or None without a shape."""
    if type_proto is None or not type_proto.tensor_type.HasField('shape'):
        return None
    return [dim.dim_value if dim.HasField('dim_value') else None
            for dim in type_proto.tensor_type.shape.dim]


def _shape_map(model) -> Dict[str, Optional[List[Optional[int]]]]:
    """Return name -> dims (None where unknown) of every inferred tensor of ``model``."""
    return {name: _dims(type_proto) for name, type_proto in _type_map(model).items()}


def _refine_types(node, types, constants, opset) -> None:
    """Infer the node's output types from what is now known of its inputs (constants too)."""
    import onnx
    from onnx import helper, numpy_helper

    known = [_dims(types.get(name)) for name in node.output]
    if all(dims is not None and None not in dims for dims in known):
        return
    input_types, input_data = {}, {}
    for name in node.input:
        if not name:
            continue
        if name in constants:
            value = constants[name]
            input_data[name] = numpy_helper.from_array(value, name)
            input_types[name] = helper.make_tensor_type_proto(
                helper.np_dtype_to_tensor_dtype(value.dtype), value.shape)
        elif name in types:
            input_types[name] = types[name]
        else:
            return
    try:
        schema = onnx.defs.get_schema(node.op_type, opset, node.domain)
        inferred = onnx.shape_inference.infer_node_outputs(schema, node, input_types, input_data)
    except Exception:  # noqa: B902 - inference is best effort; the graph stays as it is
        return
    for name, type_proto in inferred.items():
        dims = _dims(type_proto)
        if dims is not None and (known[list(node.output).index(name)] is None
                                 or dims.count(None) < known[list(node.output).index(name)]
                                 .count(None)):
            types[name] = type_proto


def _evaluate(node, values: Sequence[np.ndarray], opset: int) -> List[np.ndarray]:
    """Run one node on constant inputs with ONNX's reference implementation."""
    from onnx.reference import ReferenceEvaluator

    evaluator = ReferenceEvaluator(node, opsets={'': opset})
    feeds = {name: value for name, value in zip(node.input, values) if name}
    return [np.asarray(value) for value in evaluator.run(None, feeds)]


def fold_constants(model, opset: int = ONNX_OPSET, max_rounds: int = 10,
                   record: Optional[Dict[str, np.ndarray]] = None):
    """Replace every node computable without the graph input by an initializer, in place.

    Shape arithmetic is tracked with unknown entries (the dynamic batch) as NaN: ``Shape`` of a
    tensor whose other dimensions are static and the ``Gather`` / ``Concat`` / arithmetic on it
    fold to constants wherever they only involve static dimensions, and a ``Reshape`` target
    with a single unknown entry becomes a constant with -1 there. So the int64 shape arithmetic
    of the trace disappears from a static graph and shrinks to the batch dimension in a dynamic
    one. A broadcast of a constant to the batch (:data:`BROADCAST_OPS` growing it by more than
    MAX_FOLD_GROWTH_BYTES) stays, to keep the file small. Unused nodes and initializers are
    dropped.
    ``record``, if given, receives every folded tensor by name. Returns the model.
    """
    from onnx import numpy_helper

    for _ in range(max_rounds):
        graph = model.graph
        types = _type_map(model)
        constants = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
        partial: Dict[str, tuple] = {}
        kept = []
        for node in graph.node:
            outputs = _fold_node(node, constants, partial, types, opset)
            if outputs is None:
                kept.append(node)
                _refine_types(node, types, constants, opset)
            else:
                constants.update(zip(node.output, outputs))
                if record is not None:
                    record.update(zip(node.output, outputs))
        kept = _live_nodes(kept, {output.name for output in graph.output})
        if len(kept) == len(graph.node):
            break
        _replace_nodes(model, kept, constants)
    return model


def fold_batch_independent(model, probes: Sequence[int] = (2, 3, 5), opset: int = ONNX_OPSET):
    """Fold the batch-independent shape arithmetic of a dynamic-batch graph, in place.

    The graph is folded once per probe batch size with that size fixed; a tensor whose folded
    value is the same for every probe does not depend on the batch and becomes a constant, and a
    ``Reshape`` target that differs in one entry only gets -1 there (a literal -1 elsewhere is
    replaced by the probes' common output dimension first). What is left computes the batch
    dimension only. Returns the model.
    """
    import copy

    probed = []
    for batch in probes:
        fixed = copy.deepcopy(model)
        fixed.graph.input[0].type.tensor_type.shape.dim[0].dim_value = batch
        values: Dict[str, np.ndarray] = {}
        fold_constants(fixed, opset, record=values)
        probed.append((values, _shape_map(fixed)))
    constants: Dict[str, np.ndarray] = {}
    kept = []
    for node in model.graph.node:
        outputs = [_common_value(name, probed) for name in node.output]
        if all(value is not None for value in outputs):
            constants.update(zip(node.output, outputs))
            continue
        if node.op_type == 'Reshape':
            target = _batch_reshape_target(node, probed)
            if target is not None:
                node.input[1] = node.input[1] + '_batch_free'
                constants[node.input[1]] = target
        kept.append(node)
    _replace_nodes(model, _live_nodes(kept, {output.name for output in model.graph.output}),
                   constants)
    return model


def _common_value(name: str, probed) -> Optional[np.ndarray]:
    """Return the value ``name`` folded to under every probe batch, if it is the same in all."""
    values = [values.get(name) for values, _ in probed]
    if any(value is None for value in values):
        return None
    first = values[0]
    if all(value.shape == first.shape and np.array_equal(value, first) for value in values[1:]):
        return first
    return None


def _batch_reshape_target(node, probed) -> Optional[np.ndarray]:
    """Return a constant Reshape target with -1 at the one batch-dependent entry, else None."""
    targets = [values.get(node.input[1]) for values, _ in probed]
    out_dims = [shapes.get(node.output[0]) for _, shapes in probed]
    if any(target is None for target in targets) or any(dims is None for dims in out_dims):
        return None
    if len({target.shape for target in targets}) != 1:
        return None
    stacked = np.stack(targets)
    varying = np.flatnonzero(np.any(stacked != stacked[0], axis=0))
    if len(varying) != 1:
        return None
    target = stacked[0].copy()
    for index in np.flatnonzero(target == -1):
        dims = {tuple(dims)[index] for dims in out_dims}
        if len(dims) != 1 or None in dims:
            return None
        target[index] = dims.pop()
    target[varying[0]] = -1
    return target.astype(np.int64)


def _replace_nodes(model, nodes: list, constants: Dict[str, np.ndarray]) -> None:
    """Set the graph's nodes; add the constants they read as initializers, drop unused ones."""
    from onnx import numpy_helper

    graph = model.graph
    used = {name for node in nodes for name in node.input}
    used.update(output.name for output in graph.output)
    existing = {init.name for init in graph.initializer}
    new_inits = [numpy_helper.from_array(np.asarray(constants[name]), name)
                 for name in sorted(used) if name in constants and name not in existing]
    keep_inits = [init for init in graph.initializer if init.name in used]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.initializer[:]
    graph.initializer.extend(keep_inits + new_inits)
    del graph.value_info[:]


def _live_nodes(nodes: list, outputs: set) -> list:
    """Return ``nodes`` without those whose outputs nothing reads (dead code), in order."""
    needed = set(outputs)
    live = []
    for node in reversed(nodes):
        if any(name in needed for name in node.output):
            live.append(node)
            needed.update(name for name in node.input if name)
    return live[::-1]


#: Ops evaluated on partially known shape tensors (unknown entries are NaN, dtype tracked).
_STRUCTURAL_OPS = frozenset(('Gather', 'Unsqueeze', 'Squeeze', 'Concat', 'Slice'))
_ARITHMETIC_OPS = frozenset(('Add', 'Sub', 'Mul', 'Div', 'Mod', 'Floor', 'Ceil', 'Neg'))


def _fold_node(node, constants, partial, types, opset) -> Optional[List[np.ndarray]]:
    """Return the node's outputs as constants when they do not depend on the pixel values."""
    from onnx import TensorProto

    inputs = [name for name in node.input if name]
    if node.op_type == 'Shape':
        if node.input[0] in constants:
            return [np.array(constants[node.input[0]].shape, np.int64)]
        dims = _dims(types.get(node.input[0]))
        if dims is None:
            return None
        if all(dim is not None for dim in dims):
            return [np.array(dims, np.int64)]
        values = np.array([np.nan if dim is None else dim for dim in dims], np.float64)
        partial[node.output[0]] = (values, TensorProto.INT64)
        return None
    if node.op_type == 'Reshape' and node.input[1] in partial:
        target = partial[node.input[1]][0]
        if np.isnan(target).sum() == 1 and not np.any(target == -1):
            name = node.input[1] + '_static'
            constants[name] = np.nan_to_num(target, nan=-1).astype(np.int64)
            node.input[1] = name
        return None
    if any(name in partial for name in inputs):
        return _fold_partial(node, constants, partial, opset)
    if node.op_type.startswith('Random') or not all(name in constants for name in inputs):
        return None
    values = [constants[name] if name else None for name in node.input]
    outputs = _evaluate(node, values, opset)
    grown = sum(out.nbytes for out in outputs) - sum(constants[name].nbytes for name in inputs)
    if node.op_type in BROADCAST_OPS and grown > MAX_FOLD_GROWTH_BYTES:
        return None
    return outputs


def _fold_partial(node, constants, partial, opset) -> Optional[List[np.ndarray]]:
    """Propagate a partially known shape tensor; return constants once it is fully known."""
    from onnx import helper, TensorProto

    if not all(name in constants or name in partial for name in node.input if name):
        return None
    first = node.input[0]
    dtype = partial[first][1] if first in partial else TensorProto.INT64
    values = [partial[name][0] if name in partial else constants[name] if name else None
              for name in node.input]
    if node.op_type in ('Cast', 'Identity'):
        result = values[0]
        if node.op_type == 'Cast':
            dtype = helper.get_attribute_value(node.attribute[0])
    elif node.op_type in _STRUCTURAL_OPS:
        if node.op_type == 'Concat':
            values = [value.astype(np.float64) for value in values]
        result = _evaluate(node, values, opset)[0]
    elif node.op_type in _ARITHMETIC_OPS:
        values = [np.asarray(value, np.float64) for value in values]
        with np.errstate(invalid='ignore', divide='ignore'):
            if node.op_type == 'Mod':
                result = np.mod(values[0], values[1])
            elif node.op_type == 'Div' and dtype in (TensorProto.INT64, TensorProto.INT32):
                result = np.trunc(values[0] / values[1])
            else:
                result = _evaluate(node, values, opset)[0]
    else:
        return None
    result = np.asarray(result, np.float64)
    if np.isnan(result).any():
        partial[node.output[0]] = (result, dtype)
        return None
    return [result.astype(helper.tensor_dtype_to_np_dtype(dtype))]


def einsum_to_matmul(model):
    """Rewrite each 2-operand ``Einsum`` with one constant operand as Transpose + MatMul, in place.

    Handles equations with one contracted index and one free index on the constant side, the
    form of SAM's decomposed relative-position terms (``bhwc,hkc->bhwk``, ``bhwc,wkc->bhwk``);
    others are left as they are (and :func:`check_tensorrt_compatible` then names them).
    """
    from onnx import helper, numpy_helper

    graph = model.graph
    constants = {init.name: init for init in graph.initializer}
    nodes = []
    for node in graph.node:
        plan = _einsum_plan(node, constants) if node.op_type == 'Einsum' else None
        if plan is None:
            nodes.append(node)
            continue
        data_perm, weight, output_perm = plan
        name = node.name or node.output[0]
        weight_name = name + '_matmul_weight'
        graph.initializer.append(numpy_helper.from_array(weight, weight_name))
        permuted, product = name + '_permuted', name + '_product'
        nodes.append(helper.make_node('Transpose', [node.input[0]], [permuted],
                                      name=name + '_transpose_in', perm=data_perm))
        nodes.append(helper.make_node('MatMul', [permuted, weight_name], [product],
                                      name=name + '_matmul'))
        nodes.append(helper.make_node('Transpose', [product], [node.output[0]],
                                      name=name + '_transpose_out', perm=output_perm))
    _replace_nodes(model, nodes, {})
    return model


def _einsum_plan(node, constants):
    """Return (data permutation, constant weight, output permutation) or None if not handled."""
    from onnx import helper, numpy_helper

    equation = helper.get_attribute_value(node.attribute[0]).decode().replace(' ', '')
    if len(node.input) != 2 or '->' not in equation or '.' in equation:
        return None
    operands, output = equation.split('->')
    data_labels, weight_labels = operands.split(',')
    if node.input[1] not in constants or node.input[0] in constants:
        return None
    contracted = [label for label in weight_labels if label in data_labels
                  and label not in output]
    batch = [label for label in weight_labels if label in data_labels and label in output]
    weight_free = [label for label in weight_labels if label not in data_labels]
    data_free = [label for label in data_labels if label not in weight_labels]
    if (len(contracted) != 1 or len(weight_free) != 1 or not data_free
            or len(set(data_labels)) != len(data_labels)
            or sorted(output) != sorted(data_free + batch + weight_free)):
        return None
    # MatMul broadcasts leading dims: data (free[:-1], batch, free[-1], c) @ weight (batch, c, k).
    data_order = data_free[:-1] + batch + [data_free[-1]] + contracted
    weight_order = batch + contracted + weight_free
    weight = numpy_helper.to_array(constants[node.input[1]])
    weight = np.ascontiguousarray(weight.transpose([weight_labels.index(label)
                                                    for label in weight_order]))
    product_labels = data_free[:-1] + batch + [data_free[-1]] + weight_free
    return ([data_labels.index(label) for label in data_order], weight,
            [product_labels.index(label) for label in output])


def check_tensorrt_compatible(model, static: bool) -> List[str]:
    """Return the problems TensorRT 8.2 would have with ``model`` (empty list: none found).

    Checks: onnx.checker; opset <= 13; only ops in :data:`TENSORRT_82_OPS`; one float32 input
    and output with the agreed names; no int64 / float64 tensor computed from the pixels (int64
    may only flow through shape arithmetic rooted at ``Shape`` or constants); no Cast to
    int64 / float64; in a static graph, no ``Shape`` op left at all.
    """
    import onnx
    from onnx import TensorProto

    problems = []
    try:
        onnx.checker.check_model(model, full_check=True)
    except onnx.checker.ValidationError as error:
        problems.append('onnx.checker: %s' % str(error).splitlines()[0])
    opsets = {entry.domain: entry.version for entry in model.opset_import}
    if opsets.get('', opsets.get('ai.onnx', 0)) > ONNX_OPSET:
        problems.append('opset %d > %d (TensorRT 8.2 parses up to opset 13)'
                        % (opsets.get(''), ONNX_OPSET))
    graph = model.graph
    for value, expected in ((graph.input, INPUT_NAME), (graph.output, OUTPUT_NAME)):
        names = [item.name for item in value if item.name not in
                 {init.name for init in graph.initializer}]
        if names != [expected]:
            problems.append('graph I/O %s, expected [%r]' % (names, expected))
        for item in value:
            if item.type.tensor_type.elem_type != TensorProto.FLOAT:
                problems.append('graph I/O %s is not float32' % item.name)
    unsupported = sorted({node.op_type for node in graph.node} - TENSORRT_82_OPS)
    if unsupported:
        problems.append('ops TensorRT 8.2 cannot import: %s' % unsupported)
    for node in graph.node:
        if node.domain not in ('', 'ai.onnx'):
            problems.append('node %s uses custom domain %r' % (node.name, node.domain))
        if node.op_type == 'Cast':
            target = onnx.helper.get_attribute_value(node.attribute[0])
            if target in (TensorProto.INT64, TensorProto.DOUBLE):
                problems.append('node %s casts to %s' % (
                    node.name, TensorProto.DataType.Name(target)))
        if static and node.op_type == 'Shape':
            problems.append('static graph still computes Shape at node %s' % node.name)
    problems.extend(_pixel_derived_wide_types(model))
    return problems


def _pixel_derived_wide_types(model) -> List[str]:
    """Return problems for int64 / float64 tensors that depend on the pixel input data."""
    import onnx
    from onnx import TensorProto

    inferred = onnx.shape_inference.infer_shapes(model)
    types = {value.name: value.type.tensor_type.elem_type
             for value in list(inferred.graph.value_info) + list(inferred.graph.output)}
    data_derived = {INPUT_NAME}
    problems = []
    for node in model.graph.node:
        if node.op_type == 'Shape':
            continue  # a shape is metadata, not pixel data
        if any(name in data_derived for name in node.input):
            data_derived.update(node.output)
            for name in node.output:
                if types.get(name) in (TensorProto.INT64, TensorProto.DOUBLE):
                    problems.append('tensor %s (%s, from node %s) is %s computed from the pixels'
                                    % (name, node.op_type, node.name,
                                       TensorProto.DataType.Name(types[name])))
    return problems


#: Files of a model folder that an exported folder carries, so that it runs on its own.
DESCRIPTION_FILES = ('config.json', 'sat_seg.json')
WEIGHTS_FILE = 'model.safetensors'


def check_export_target(model_dir: os.PathLike | str, out: os.PathLike | str) -> None:
    """Refuse an ``out`` folder that holds another model's files (nothing is written then).

    Another model's files: a ``config.json`` or ``model.safetensors`` that differs from the
    source's, or an ONNX graph exported from other weights.
    """
    import onnx

    source, out = Path(model_dir), Path(out)
    if not out.exists() or source.resolve() == out.resolve():
        return
    if not out.is_dir():
        raise ValueError('--out %s exists and is not a folder' % out)
    problems = []
    for name in ('config.json', WEIGHTS_FILE):
        theirs, ours = out / name, source / name
        if theirs.is_file() and ours.is_file() and file_sha256(theirs) != file_sha256(ours):
            problems.append('%s differs from %s' % (theirs, ours))
    weights = source / WEIGHTS_FILE
    digest = file_sha256(weights) if weights.is_file() else ''
    for graph in sorted(out.glob('*.onnx')):
        meta = {entry.key: entry.value
                for entry in onnx.load(str(graph), load_external_data=False).metadata_props}
        exported = meta.get('sat_seg.weights_sha256')
        if exported is not None and exported != digest:
            problems.append('%s was exported from other weights' % graph)
    if problems:
        raise ValueError("--out %s holds another model's files (%s); export into an empty or "
                         "new folder, or the same model's export folder"
                         % (out, '; '.join(problems)))


def copy_description(model_dir: os.PathLike | str, out: os.PathLike | str,
                     with_weights: bool = False) -> List[str]:
    """Copy config.json, sat_seg.json (and the weights) into ``out`` atomically; return names."""
    source, out = Path(model_dir), Path(out)
    if source.resolve() == out.resolve():
        return []
    names = [name for name in DESCRIPTION_FILES if (source / name).is_file()]
    if with_weights and (source / WEIGHTS_FILE).is_file():
        names.append(WEIGHTS_FILE)
    for name in names:
        atomic_write_bytes(out / name, (source / name).read_bytes())
    return names


def export_model(model_dir: os.PathLike | str, out_dir: Optional[os.PathLike | str] = None,
                 prompt_mode: Optional[str] = None, grid_points: Optional[int] = None,
                 static_batch: Optional[int] = DEFAULT_STATIC_BATCH, dynamic: bool = True,
                 verify: bool = True, tolerance: float = 1e-3,
                 with_weights: bool = False) -> List[Dict[str, object]]:
    """Export ``model_dir`` to ONNX in ``out_dir`` (default: the model folder); return a summary.

    Writes the dynamic-batch graph (``dynamic``) and a static one with batch ``static_batch``
    (None: none), each checked with :func:`check_tensorrt_compatible`, and with ``verify``
    compared against torch on random tiles with ONNX Runtime (max abs logit difference must be
    below ``tolerance``). Each summary item: path, batch, nodes, ops, max_abs_diff.

    A separate ``out_dir`` becomes a self-contained model folder for the onnxruntime and
    tensorrt backends: the graphs plus ``config.json`` and ``sat_seg.json`` (and the weights
    with ``with_weights``). Every graph is built and checked before the first file is written,
    and a folder holding another model's files is refused (:func:`check_export_target`).
    """
    info = load_model_info(model_dir)
    prompt_mode = prompt_mode or info['prompt_mode']
    grid_points = int(grid_points or info['grid_points'])
    if prompt_mode not in PROMPT_MODES:
        raise ValueError('prompt_mode=%r is not one of %s' % (prompt_mode, PROMPT_MODES))
    if static_batch is not None and static_batch < 1:
        raise ValueError('static_batch=%r must be >= 1 (or None for no static graph)'
                         % (static_batch,))
    if static_batch is None and not dynamic:
        raise ValueError('nothing to export: give static_batch or dynamic=True')
    out = Path(out_dir or model_dir)
    check_export_target(model_dir, out)
    predictor, input_size = load_predictor(model_dir, prompt_mode, grid_points)
    weights = Path(model_dir) / 'model.safetensors'
    metadata = {
        'sat_seg.prompt_mode': prompt_mode, 'sat_seg.grid_points': str(grid_points),
        'sat_seg.input_size': str(input_size), 'sat_seg.opset': str(ONNX_OPSET),
        'sat_seg.weights_sha256': file_sha256(weights) if weights.is_file() else '',
    }
    summary, graphs = [], []
    for batch in ([None] if dynamic else []) + ([static_batch] if static_batch else []):
        model = torch_export(predictor, input_size, batch)
        if batch is None:
            fold_batch_independent(model)
        fold_constants(model)
        einsum_to_matmul(model)
        fold_constants(model)
        model.producer_name = 'sat_seg_ros'
        entries = dict(metadata, **{'sat_seg.batch': 'dynamic' if batch is None else str(batch)})
        del model.metadata_props[:]
        for key, value in sorted(entries.items()):
            model.metadata_props.add(key=key, value=value)
        problems = check_tensorrt_compatible(model, static=batch is not None)
        if problems:
            raise ExportError('exported graph is not TensorRT-8.2 compatible:\n  '
                              + '\n  '.join(problems))
        data = model.SerializeToString()
        path = out / onnx_file_name(input_size, prompt_mode, grid_points, batch)
        item = {'path': str(path), 'batch': 'dynamic' if batch is None else batch,
                'nodes': len(model.graph.node),
                'ops': sorted({node.op_type for node in model.graph.node}),
                'max_abs_diff': None}
        if verify:
            item['max_abs_diff'] = _max_abs_diff(predictor, data, input_size, batch or 3)
            if not item['max_abs_diff'] < tolerance:
                raise ExportError('ONNX Runtime differs from torch by %.3g (> %.3g) for %s'
                                  % (item['max_abs_diff'], tolerance, path.name))
        graphs.append((path, data))
        summary.append(item)
    for name in copy_description(model_dir, out, with_weights):
        LOG.info('wrote %s', out / name)
    for (path, data), item in zip(graphs, summary):
        atomic_write_bytes(path, data)
        LOG.info('wrote %s (%d nodes, %s)', path, item['nodes'],
                 'not compared with torch' if item['max_abs_diff'] is None
                 else 'max |onnx - torch| = %.3g' % item['max_abs_diff'])
    return summary


def _max_abs_diff(predictor, data: bytes, input_size: int, batch: int) -> float:
    """Return max |ORT - torch| of the logits on ``batch`` random normalised tiles."""
    import onnxruntime
    import torch

    tiles = np.random.default_rng(0).normal(size=(batch, 3, input_size, input_size))
    tiles = tiles.astype(np.float32)
    session = onnxruntime.InferenceSession(data, providers=['CPUExecutionProvider'])
    onnx_logits = session.run([OUTPUT_NAME], {INPUT_NAME: tiles})[0]
    with torch.no_grad():
        torch_logits = predictor(torch.from_numpy(tiles)).numpy()
    return float(np.abs(onnx_logits - torch_logits).max())

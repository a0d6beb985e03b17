# Set-up, demo and checks for kp3d. `make demo` and `make test` work on a fresh machine.

PYTHON ?= python3
VENV ?= .venv
# Pinned and installed first: left unpinned, pip pulls a multi-GB CUDA build of torch.
# With a GPU, override it, e.g. `make TORCH_SPEC=torch demo` for the default CUDA build.
TORCH_SPEC ?= torch==2.13.0

# Headless machines render offscreen through EGL; with a display, MuJoCo picks GLFW itself.
ifndef DISPLAY
MUJOCO_GL ?= egl
export MUJOCO_GL
endif

STAMP := $(VENV)/.installed

.PHONY: setup demo test test-slow bench lint format clean

setup: $(STAMP)

$(VENV): $(STAMP)

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --upgrade pip
	$(VENV)/bin/python -m pip install "$(TORCH_SPEC)"
	$(VENV)/bin/python -m pip install -e ".[dev,progress,tensorboard]"
	touch $@

# The demo run's directory, named like `kp3d train` names runs (override: make demo DEMO_RUN=...).
ifndef DEMO_RUN
DEMO_RUN := runs/kp3d-Reach-v0__demo__1__$(shell date +%s)
endif

# Reach solved from pixels (configs/demo.yaml, about 12 minutes on 2 CPU cores): a dataset,
# Keypoint3D pretrained on it, SAC on its keypoints; then the success rate over 20 evaluation
# episodes, the learning curve, and last a video of the agent with the keypoints it perceives
# (`kp3d render` ends by printing the video's path).
demo: $(STAMP)
	$(VENV)/bin/kp3d train configs/demo.yaml --run-dir $(DEMO_RUN)
	$(VENV)/bin/kp3d eval $(DEMO_RUN) --episodes 20
	$(VENV)/bin/kp3d plot $(DEMO_RUN)
	@echo
	@echo "run:          $(DEMO_RUN)"
	@echo "tensorboard:  $(VENV)/bin/tensorboard --logdir $(DEMO_RUN)/logs"
	$(VENV)/bin/kp3d render $(DEMO_RUN) --episodes 2

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/python -m pytest

test-slow: $(STAMP)
	$(VENV)/bin/python -m pytest -m slow

bench: $(STAMP)
	$(VENV)/bin/kp3d bench envs

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# Caches and build outputs only: runs/ holds results and is never removed here.
clean:
	rm -rf .pytest_cache .ruff_cache build dist *.egg-info
	find . -path ./$(VENV) -prune -o -type d -name __pycache__ -exec rm -rf {} +

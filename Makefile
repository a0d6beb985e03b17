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

.PHONY: setup demo test test-slow test-metaworld bench lint format clean

setup: $(STAMP)

$(VENV): $(STAMP)

$(STAMP): pyproject.toml
	@echo "setting up $(VENV): kp3d, $(TORCH_SPEC) and their dependencies (a few minutes)"
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet "$(TORCH_SPEC)"
	$(VENV)/bin/python -m pip install --quiet -e ".[dev,progress,tensorboard,sweep]"
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
	$(VENV)/bin/lint-imports
	$(VENV)/bin/python -m pytest

test-slow: $(STAMP)
	$(VENV)/bin/python -m pytest -m slow

# Meta-World 3.x pins mujoco==3.3.0, so it gets a virtualenv of its own (set up like $(VENV)). The
# env tests run there on MuJoCo 3.3, with tests/envs/test_metaworld.py: Meta-World's own scripted
# policies through envs.make_metaworld must succeed exactly as often as on the unwrapped envs.
METAWORLD_VENV ?= .venv-metaworld
METAWORLD_STAMP := $(METAWORLD_VENV)/.installed

$(METAWORLD_STAMP): pyproject.toml
	test -x $(METAWORLD_VENV)/bin/python || $(PYTHON) -m venv $(METAWORLD_VENV)
	$(METAWORLD_VENV)/bin/python -m pip install --upgrade pip
	$(METAWORLD_VENV)/bin/python -m pip install "$(TORCH_SPEC)"
	$(METAWORLD_VENV)/bin/python -m pip install -e ".[metaworld,dev]"
	touch $@

test-metaworld: $(METAWORLD_STAMP)
	$(METAWORLD_VENV)/bin/python -c "import mujoco, metaworld; print('mujoco', mujoco.__version__)"
	$(METAWORLD_VENV)/bin/python -m pytest tests/envs

bench: $(STAMP)
	$(VENV)/bin/kp3d bench envs

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

# Caches and build outputs only: runs/ holds results and is never removed here.
clean:
	rm -rf .pytest_cache .ruff_cache build dist *.egg-info
	find . \( -path ./$(VENV) -o -path ./$(METAWORLD_VENV) \) -prune -o -type d -name __pycache__ -exec rm -rf {} +

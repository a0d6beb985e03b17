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

demo: $(STAMP)
	$(VENV)/bin/kp3d demo

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

# fcos_d2 developer tasks.  `make test` and `make demo` set the environment up first.
#   make setup            create .venv and install everything (fast when up to date)
#   make test             run the test suite
#   make demo             train the small demo FCOS on CPU/GPU
#   make test PY=python   use another interpreter (installs into its environment)
PY ?= .venv/bin/python
VENV_PY := .venv/bin/python

.PHONY: setup test demo

setup:
ifeq ($(PY),$(VENV_PY))
	bash scripts/setup_env.sh
else
	PYTHON="$(PY)" bash scripts/setup_env.sh
endif

test: setup
	$(PY) -m pytest -q tests

demo: setup
	$(PY) train_net.py --config-file configs/FCOS-Demo/fcos_R_18_demo.yaml --num-gpus 1

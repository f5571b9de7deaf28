# fcos_d2 developer tasks.  `make test` and `make demo` set the environment up first.
#   make setup            create .venv and install everything (fast when up to date)
#   make test             lint (ruff) and run the whole test suite
#   make test-fast        the suite without the tests marked slow (training, long exports)
#   make demo             train the small demo FCOS on CPU/GPU
#   make test PY=python   use another interpreter (installs into its environment)
#   make test-detectron2-source [D2_SOURCE=path]
#                         build a compiled Detectron2 from source in build/ and run the
#                         tests against it (scripts/test_with_detectron2_source.sh)
PY ?= .venv/bin/python
VENV_PY := .venv/bin/python
D2_SOURCE ?= ../shared/third_party/detectron2-main-02b5c4e.tar.gz

.PHONY: setup test test-fast demo test-detectron2-source

setup:
ifeq ($(PY),$(VENV_PY))
	bash scripts/setup_env.sh
else
	PYTHON="$(PY)" bash scripts/setup_env.sh
endif

test: setup
	$(PY) -m ruff check .
	$(PY) -m pytest -q tests

test-fast: setup
	$(PY) -m pytest -q tests -m "not slow"

demo: setup
	$(PY) train_net.py --config-file configs/FCOS-Demo/fcos_R_18_demo.yaml --num-gpus 1

test-detectron2-source:
	bash scripts/test_with_detectron2_source.sh $(D2_SOURCE)

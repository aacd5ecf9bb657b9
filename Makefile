# The course's commands. Each target creates the virtual environment it needs.
#   make demo   generate the synthetic data, train the toy model, evaluate, draw predictions
#   make test   run the whole test suite
#   make lab    open the course notebooks in JupyterLab
#   make html   run the course at learner scale and render it to outputs/html/

PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed
# Never put the repository root on sys.path: its folder `kernels/` must stay
# `ddetr_lib.kernels` and never shadow the PyPI package named `kernels`.
export PYTHONSAFEPATH = 1

DEMO_CONFIG ?= toy_deformable_detr
DEMO_DATA   ?= data/synthetic_demo
DEMO_OUT    ?= outputs/demo
DEMO_ARGS   ?=
PYTEST_ARGS ?=

.PHONY: setup demo data test lab html gpu-check bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

setup: $(STAMP)

data: $(STAMP)
	$(PY) -m ddetr_lib.data.synthetic --out $(DEMO_DATA) --setting demo

demo: data
	$(PY) -m ddetr_lib.train --config $(DEMO_CONFIG) --data-root $(DEMO_DATA) \
	    --output-dir $(DEMO_OUT) --overwrite $(DEMO_ARGS)

test: $(STAMP)
	$(VENV)/bin/pytest $(PYTEST_ARGS)

lab: $(STAMP)
	$(VENV)/bin/jupyter lab notebooks/

# Notebooks are committed without outputs; this executes them (learner scale, fresh
# kernels) and writes readable HTML pages with every figure.
html: $(STAMP)
	$(PY) -m ddetr_lib.course.runner --scale learner --html outputs/html --times outputs/html/times.json

bench: $(STAMP)
	$(PY) benchmarks/kernel_bench.py

gpu-check:
	bash scripts/gpu_check.sh

clean:
	rm -rf outputs .pytest_cache

# Two commands on a fresh machine: `make demo` (the main job) and `make test`.
# Each creates .venv and installs what it needs (pinned by constraints.txt).
VENV ?= .venv
PY := $(VENV)/bin/python
CNNDSL := $(VENV)/bin/cnndsl
SPEC ?= specs/resnet18.cnn
OUT ?= build

.PHONY: demo test lint bench clean

$(VENV)/.installed: pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -c constraints.txt -e '.[all,dev]'
	touch $@

demo: $(VENV)/.installed
	@mkdir -p $(OUT)
	$(CNNDSL) check $(SPEC)
	$(CNNDSL) compile $(SPEC) --to torch -o $(OUT)/model.py
	$(CNNDSL) compile $(SPEC) --to onnx -o $(OUT)/model.onnx
	$(CNNDSL) render $(SPEC) -o $(OUT)/model.svg
	$(CNNDSL) summary $(SPEC) --depth 1
	$(CNNDSL) run $(OUT)/model.onnx --batch 1 --bench 20

# on every core (pytest-xdist), a test file to a worker: its module fixtures are made once
test: $(VENV)/.installed
	$(PY) -m pytest -n auto --dist loadfile

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check cnndsl tests tools benchmarks

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache

# The README's commands. `make run` and `make test` work on a fresh machine: each sets up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
GLUE_DIR ?= ../shared/data/glue
RUN_DIR ?= runs/rte
EPOCHS ?= 1
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup run test lint bench clean

$(BIN)/nasprune: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch 2.13.0 first: it comes from the machine's local CPU wheel; a bare `torch` would pull CUDA builds.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev,onnx]'
	touch $@

setup: $(BIN)/nasprune

# The main job on embedded defaults: the offline MiniLM supernet on RTE, then export its middle sub-network
# and load the export with plain transformers.
run: setup
	$(BIN)/nasprune train --model minilm --task glue/rte --data-dir $(GLUE_DIR) --epochs $(EPOCHS) --out $(RUN_DIR)
	$(BIN)/nasprune export --run $(RUN_DIR) --config middle --out $(RUN_DIR)/export-middle
	$(BIN)/python examples/load_export.py $(RUN_DIR)/export-middle

test: setup
	$(BIN)/python -m pytest -q

lint: setup
	$(BIN)/ruff check .

bench: setup
	$(BIN)/python bench/supernet_speed.py

clean:
	rm -rf $(VENV) runs *.egg-info

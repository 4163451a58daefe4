# The README's commands. `make run` and `make test` work on a fresh machine: each sets up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
GLUE_DIR ?= ../shared/data/glue
# The demo's budget (`make run`, `make search`): SST-2 with a capped training set shows a real trade-off in a few
# minutes on a 2-core CPU. The full size is the defaults: `make search TRAIN_LIMIT= VALIDATION_LIMIT=5000 EPOCHS=4
# EVALUATIONS=100`.
TASK ?= glue/sst2
RUN_DIR ?= runs/sst2
TRAIN_LIMIT ?= 3000
VALIDATION_LIMIT ?= 1000
EPOCHS ?= 1
EVALUATIONS ?= 30
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup run search test test-fast lint bench clean

$(BIN)/nasprune: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	# torch 2.13.0 first: it comes from the machine's local CPU wheel; a bare `torch` would pull CUDA builds.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e '.[dev,onnx,ray,web,browser]'
	touch $@

setup: $(BIN)/nasprune

# The main job on embedded defaults: start the service (API + one worker, SQLite under runs/service), submit a
# small search of the offline MiniLM on $(TASK), watch it, print the front, download a point, load it, stop.
run: setup
	$(BIN)/python examples/service_demo.py --glue-dir $(GLUE_DIR) --data-root runs/service --task $(TASK) \
		--train-limit $(TRAIN_LIMIT) --validation-limit $(VALIDATION_LIMIT) --epochs $(EPOCHS) \
		--evaluations $(EVALUATIONS)

# The same pipeline through the local CLI: supernet training + search into $(RUN_DIR) (it prints the front), export
# point 0, load it.
search: setup
	$(BIN)/nasprune search --model minilm --task $(TASK) --data-dir $(GLUE_DIR) --objectives error,params,latency \
		--optimizer nsga2 $(if $(TRAIN_LIMIT),--train-limit $(TRAIN_LIMIT)) --validation-limit $(VALIDATION_LIMIT) \
		--epochs $(EPOCHS) --evaluations $(EVALUATIONS) --out $(RUN_DIR)
	$(BIN)/nasprune export --run $(RUN_DIR) --point 0 --out $(RUN_DIR)/point-0
	$(BIN)/python examples/load_export.py $(RUN_DIR)/point-0

test: setup
	$(BIN)/python -m pytest -q

# For development: everything but the tests marked slow (the MiniLM model, real service processes, ONNX).
# CI (.ci/run) still runs the whole suite with `make test`.
test-fast: setup
	$(BIN)/python -m pytest -q -m "not slow"

lint: setup
	$(BIN)/ruff check .

bench: setup
	$(BIN)/python bench/supernet_speed.py
	$(BIN)/python bench/latency_model.py
	$(BIN)/python bench/search_speed.py

clean:
	rm -rf $(VENV) runs *.egg-info

# Every target installs what it needs first, so on a fresh clone `make train` and `make test`
# are the whole set-up.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
RUN ?= outputs/$(shell date +%Y-%m-%d)/$(shell date +%H-%M-%S)-default

.PHONY: install train eval test bench lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -e ".[dev,rl,table]"
	touch $@

# learn2learn, a baseline of the benchmark and its tests, is built from source (it needs a C
# compiler), so training and evaluation do not wait for it or need one.
L2L_STAMP := $(VENV)/.learn2learn
$(L2L_STAMP): $(STAMP) benchmarks/install_learn2learn.sh
	PYTHON=$(BIN)/python bash benchmarks/install_learn2learn.sh
	touch $@

install: $(STAMP) $(L2L_STAMP)

## train: the default experiment (MAML on sinusoids, ~2 min on 2 CPU cores), then its evaluation
train: $(STAMP)
	$(BIN)/maml-train hydra.run.dir=$(RUN) $(ARGS)
	$(BIN)/maml-eval checkpoint=$(RUN)

## eval: make eval CKPT=outputs/<run dir or .pt file> [ARGS="eval.tasks=1000"]
eval: $(STAMP)
	$(BIN)/maml-eval checkpoint=$(CKPT) $(ARGS)

test: $(L2L_STAMP)
	$(BIN)/pytest -q

## bench: maml-cli's engine against higher, learn2learn and a naive loop, every algorithm's speed, the trainer's overhead, evaluation and the RL phases (docs/performance.md), ~33 min on 2 cores before learn2learn's rows, which take about as long as the naive loop's (27 before the evaluation rows, which took 6 on one thread)
bench: $(L2L_STAMP)
	$(BIN)/python benchmarks/bench.py --out benchmarks/results/latest.json $(ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache

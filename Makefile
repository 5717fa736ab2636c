# Short targets; `make fit` and `make test` do all set-up themselves (virtualenv, install, data).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
CONFIG ?= configs/fashion_mnist.yaml
SYSTEM_DATA := /usr/share/datasets/fashion-mnist

.PHONY: setup data postgres chromium notebooks fit test test-fast test-lowest lint bench clean

setup: $(VENV)/.installed data

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

# The real dataset from Debian/Ubuntu's package (no download needed): installed system-wide when root,
# otherwise unpacked into ./data. Skipped when a copy is already there.
data:
	@if [ -f $(SYSTEM_DATA)/train-images-idx3-ubyte.gz ] || [ -f data/FashionMNIST/raw/train-images-idx3-ubyte ] \
	   || [ -f data/FashionMNIST/raw/train-images-idx3-ubyte.gz ]; then \
	  echo "Fashion-MNIST: found"; \
	elif [ "$$(id -u)" = 0 ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist; \
	else \
	  tmp=$$(mktemp -d) && (cd $$tmp && apt-get download dataset-fashion-mnist && dpkg-deb -x dataset-fashion-mnist_*.deb x) \
	  && mkdir -p data/FashionMNIST/raw && cp $$tmp/x$(SYSTEM_DATA)/*.gz data/FashionMNIST/raw/ && rm -rf $$tmp; \
	fi

# PostgreSQL's server programs for the sweep tests, which start a throwaway cluster of their own on 127.0.0.1
# (initdb in a temporary folder): installed when root, otherwise named. Nothing is started here.
postgres:
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then \
	  echo "PostgreSQL: found"; \
	elif [ "$$(id -u)" = 0 ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql; \
	else \
	  echo "PostgreSQL missing: the PostgreSQL sweep tests need it (sudo apt-get install postgresql)"; \
	fi

# Chromium for the serve page's browser test (driven headless by Playwright): installed when root, otherwise named.
chromium:
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then \
	  echo "Chromium: found"; \
	elif [ "$$(id -u)" = 0 ]; then \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	else \
	  echo "Chromium missing: the serve page's browser test needs it (sudo apt-get install chromium)"; \
	fi

fit: setup
	$(PY) -m lit_softmax fit --config $(CONFIG)

test: setup postgres chromium
	$(PY) -m pytest

test-fast: setup
	$(PY) -m pytest -m "not slow"

# The fast suite against the lowest versions pyproject.toml allows (.ci/lowest.txt), in a second virtualenv.
LOWEST := .venv-lowest
$(LOWEST)/.installed: pyproject.toml .ci/lowest.txt
	$(PYTHON) -m venv $(LOWEST)
	$(LOWEST)/bin/python -m pip install --quiet --upgrade pip
	$(LOWEST)/bin/python -m pip install --quiet -c .ci/lowest.txt -e '.[dev]'
	touch $@

test-lowest: $(LOWEST)/.installed data postgres
	$(LOWEST)/bin/python -m pytest -m "not slow"

# Rewrite both tutorial notebooks from notebooks/build.py and execute them (~35 s each), outputs included.
notebooks: setup
	cd notebooks && ../$(PY) build.py

bench: setup
	$(PY) benchmarks/bench.py

lint: setup
	$(VENV)/bin/ruff check lit_softmax tests benchmarks
	$(VENV)/bin/ruff format --check lit_softmax tests benchmarks

clean:
	rm -rf logs/*/ logs/mlflow.db data/FashionMNIST .pytest_cache

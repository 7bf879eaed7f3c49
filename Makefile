# The README's two commands: `make app` and `make test`. Both create the virtual
# environment when it is missing and install the project into it.
PYTHON ?= python3
VENV ?= .venv
# A CPU wheel of this version lies on the build machines' disk; GPU users override it,
# e.g. `make app TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"`.
TORCH_SPEC ?= torch==2.13.0
PORT ?= 8501
# The app has no authentication: it listens on this machine only unless HOST says otherwise
# (e.g. `make app HOST=0.0.0.0` to serve every interface, with a warning).
HOST ?= 127.0.0.1
BIN := $(VENV)/bin
STAMP := $(VENV)/.gda-installed

CHROMIUM ?= /usr/bin/chromium

.PHONY: app test install benchmark benchmark-peers benchmark-kfac-peers benchmark-images benchmark-ggda benchmark-text clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml Makefile | $(BIN)/python
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH_SPEC)
	$(BIN)/python -m pip install --quiet -e ".[app,test,ray,text]"
	touch $(STAMP)

install: $(STAMP)

app: install
	@case "$(HOST)" in 127.0.0.1|localhost|::1) ;; *) echo "WARNING: serving on $(HOST):$(PORT) with no" \
		"authentication: anyone who can reach this address can use the app and upload files" >&2 ;; esac
	$(BIN)/streamlit run app.py --server.headless true --server.address $(HOST) --server.port $(PORT) \
		--browser.gatherUsageStats false --server.maxUploadSize $${GDA_MAX_UPLOAD_MB:-500}

# The browser test drives Debian's chromium with Playwright (no browser download).
$(CHROMIUM):
	(apt-get update -qq && apt-get install -y -qq chromium) || \
		(sudo apt-get update -qq && sudo apt-get install -y -qq chromium)

test: install $(CHROMIUM)
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q

benchmark: install
	$(BIN)/python benchmarks/speed.py

# Side by side with dattri, captum and traker (installed here for the benchmark only: they are
# not dependencies of the project), per method family on digits and the 18000-point MLP.
benchmark-peers: install
	$(BIN)/pip install --no-deps dattri==0.3.0 captum==0.9.0 traker==0.3.2
	$(BIN)/python benchmarks/speed.py --peers --peer-threads 1,2

# if-ekfac / if-kfac / if-arnoldi beside kronfluence's EK-FAC and K-FAC and dattri's EK-FAC on
# digits / MLP: time, peak memory and LDS on the same model and retrained subsets (the peers
# and kronfluence's own dependencies installed here for the benchmark only, without touching torch).
benchmark-kfac-peers: install
	$(BIN)/pip install --no-deps dattri==0.3.0 kronfluence==1.0.1 einops==0.8.2 einconv==0.1.0 opt_einsum==3.4.0 \
		accelerate==1.15.0 psutil==7.2.2
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/kfac_peers.py

# mnist / ResNet-9: time, peak memory and LDS of four methods per-example, last-layer and grouped.
benchmark-images: install
	$(BIN)/python benchmarks/images.py

# Grouped attribution end to end (issue 15): mnist / ResNet-9 and synthetic / MLP, per-example
# against grad-kmeans at K = N/100 and N/1000 (and random grouping), with point-level LDS.
benchmark-ggda: install
	$(BIN)/python benchmarks/ggda.py

# The text demo (minilm on reviews): fine-tune time, per-example against grouped, LDS on 50 retrained subsets.
benchmark-text: install
	OMP_NUM_THREADS=1 $(BIN)/python benchmarks/text.py --threads 1 --lds 50 --steps 0

clean:
	rm -rf $(VENV) cache/* build *.egg-info

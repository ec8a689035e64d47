# Two commands set up everything on a fresh machine:  make demo  |  make test
PY     ?= python3
VENV   := .venv
VPY    := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
export PYTHONUNBUFFERED := 1

.PHONY: setup demo test bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml setup.py constraints.txt src/dscoder/models/_int8mm.c
	test -x $(VPY) || $(PY) -m venv $(VENV)
	$(VPY) -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[test]'
	-@bash scripts/install_system_deps.sh
	touch $(STAMP)

demo: setup
	$(VPY) -m dscoder.demo --out runs/demo

# two pytest-xdist workers (one torch thread each); --dist loadfile keeps a test file on one worker, so its
# module fixtures are built once
test: setup
	$(VPY) -m pytest -q -n 2 --dist loadfile

bench: setup
	test -f runs/demo/final/config.json || $(MAKE) demo   # bench_repo_completion measures the demo model
	for b in benchmarks/bench_*.py; do $(VPY) $$b || exit 1; done

clean:
	rm -rf $(VENV) runs build *.egg-info src/*.egg-info src/dscoder/models/_int8mm*.so

# Shortcuts; the README's commands (scripts/run, scripts/test) remain the reference.
.PHONY: test lint bench bench-quick chaos mutate mutate-score

test:
	scripts/test

lint:
	scripts/lint

# Benchmarks print side-by-side ratios measured in the same run (benchmarks/README.md).
bench:
	benchmarks/run_all

bench-quick:
	benchmarks/run_all quick

# The chaos tests, with their heavier seeded variants (tests/chaos).
chaos:
	.venv/bin/pytest tests/chaos -m "long or not long" -s

# Mutation testing of the modules that decide trust and case state (docs/mutation.md), on demand:
# mutmut 3 (the `mutation` extra) in a fresh mutants/ copy, niced, then the score per module.
# `make mutate ONLY='mailgateway.mail.auth.*'` runs one module's mutants; JOBS sets the workers;
# TESTS (a pytest -k expression, e.g. TESTS=test_auth) keeps only that module's own tests of the
# selection, for the mapping and for every mutant (docs/mutation.md lists each module's).
JOBS ?= 2
ONLY ?=
TESTS ?=
mutate:
	rm -rf mutants && mkdir mutants
	$(if $(TESTS),PYTEST_ADDOPTS="-k '$(TESTS)'") nice -n 19 .venv/bin/mutmut run --max-children $(JOBS) \
		$(if $(ONLY),'$(ONLY)') >mutants/run.log 2>&1 || { tail -c 3000 mutants/run.log; exit 1; }
	scripts/mutation_score

mutate-score:
	scripts/mutation_score --survivors

# Shortcuts; the README's commands (scripts/run, scripts/test) remain the reference.
.PHONY: test lint bench bench-quick chaos

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

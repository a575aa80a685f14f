# The README's commands by name. Each script installs what it needs on a
# fresh machine; run as root.
.PHONY: demo test bench

demo:
	scripts/demo.sh

test:
	scripts/test.sh

bench:
	scripts/bench.sh

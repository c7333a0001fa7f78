# Convenience targets; the scripts are the real interface (see README).
.PHONY: demo demo-stop test race bench build pgo services-start services-stop services-status

demo:
	scripts/demo start

demo-stop:
	scripts/demo stop

test:
	scripts/test

# Every test under the race detector (slower; not part of CI).
race:
	scripts/test -race ./...

# Benchmarks with allocation counts, against the real services.
bench:
	scripts/test -run '^$$' -bench . -benchmem ./...

build:
	go build ./...

# Regenerates cmd/brokerd/default.pgo, the profile go build optimises brokerd with.
pgo:
	scripts/pgo

services-start:
	scripts/services start

services-stop:
	scripts/services stop

services-status:
	scripts/services status

GO ?= go

.PHONY: help check check-loaded fmt vet staticcheck tidy test fuzz build bench microbench fault scale soak

help: ## list targets
	@grep -E '^[a-z-]+:.*##' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-12s %s\n", $$1, $$2}'

check: fmt vet staticcheck tidy test ## what CI runs: gofmt, go vet, staticcheck, go mod tidy, go test -race

check-loaded: ## make check with both cores busy (two busy loops), printing its wall time
	@set -e; \
	  n=$$(nproc); pids=""; for i in $$(seq $$n); do (while :; do :; done) & pids="$$pids $$!"; done; \
	  trap "kill $$pids 2>/dev/null" EXIT; \
	  echo "check-loaded: $$n busy loops running (pids$$pids)"; \
	  start=$$(date +%s); $(MAKE) --no-print-directory check; \
	  echo "check-loaded: make check passed in $$(( $$(date +%s) - start )) s with $$n cores busy"

fmt: ## fail if gofmt would change a file
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi

vet: ## go vet
	$(GO) vet ./...

# staticcheck is installed from the Go module proxy at a pinned version into
# an ignored repo-local bin dir (v0.8.2 is staticcheck 2026.2.2, which supports Go 1.26).
STATICCHECK_VERSION ?= v0.8.2
STATICCHECK := $(CURDIR)/bin/tools/staticcheck-$(STATICCHECK_VERSION)
$(STATICCHECK):
	GOBIN=$(CURDIR)/bin/tools $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)
	mv $(CURDIR)/bin/tools/staticcheck $@

staticcheck: $(STATICCHECK) ## staticcheck (bugs, dead code), pinned version
	$(STATICCHECK) ./...

tidy: ## fail if go mod tidy would change go.mod or go.sum
	@cp go.mod go.mod.tidy-check && cp go.sum go.sum.tidy-check; \
	$(GO) mod tidy; rc=0; \
	cmp -s go.mod go.mod.tidy-check && cmp -s go.sum go.sum.tidy-check || { echo "go mod tidy changes go.mod/go.sum: run it and commit"; rc=1; }; \
	mv go.mod.tidy-check go.mod; mv go.sum.tidy-check go.sum; exit $$rc

test: ## all tests with the race detector (one package at a time: the end-to-end suites measure latency)
	$(GO) test -race -count=1 -p 1 -timeout 30m ./...

FUZZTIME ?= 30s
fuzz: ## run every fuzz target for FUZZTIME each
	@for pkg in $$($(GO) list ./...); do \
	  for f in $$($(GO) test -list 'Fuzz.*' $$pkg | grep ^Fuzz); do \
	    echo "== $$pkg $$f"; $(GO) test -run XXX -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; \
	  done; done

build: ## build natserve and servectl into ./bin
	$(GO) build -o bin/ ./cmd/...

BENCH_FLAGS ?=
bench: ## the end-to-end benchmark harness (needs wrk, nginx-light, gnuplot-nox); results in bench/results; BENCH_FLAGS="-metrics=false -access-log=false -tracing" to vary
	$(GO) run ./bench/harness -duration 5s -repeats 3 -out bench/results $(BENCH_FLAGS)

SCALE_FLAGS ?= -deployments 1000
scale: ## control plane at scale (not in CI): natserve up with 1,000 deployments; SCALE_FLAGS='-deployments 1000 -replicas 2 -agents 3' for 2,000 replicas
	$(GO) run ./bench/scale $(SCALE_FLAGS)

microbench: ## hot-path micro benchmarks, each beside its baseline
	$(GO) test -run XXX -bench . -benchmem ./bench/ ./ingress/ ./controlplane/ ./worker/ ./internal/wire/

fault: ## the fault and bad-input suite with full-length outages
	NATSERVE_FAULT_FULL=1 $(GO) test -count=1 -v -run TestFaultSuite ./internal/fault/

SOAK_DURATION ?= 30m
SOAK_RATE ?= 200
SOAK_SEED ?= 1
soak: ## the chaos soak on docker compose (SOAK_DURATION=30m SOAK_RATE=200 SOAK_SEED=1); report and plot in bench/results/soak
	$(GO) run ./bench/cmd/soak -duration $(SOAK_DURATION) -rate $(SOAK_RATE) -seed $(SOAK_SEED) -out bench/results/soak

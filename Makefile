# OpenCustody approval bridge. `make demo` and `make test` are the two
# commands the README starts with; everything else is for developers.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
GO ?= go

# Pinned tool versions (see README, "Dependencies").
STATICCHECK_VERSION   := v0.8.2
PROTOC_GEN_GO_VERSION := v1.36.12
PROTOC_GEN_GO_GRPC_VERSION := v1.6.0
BTCD_VERSION          := v0.24.2

BIN := $(CURDIR)/.bin
export PATH := $(BIN):$(PATH)
export GOTOOLCHAIN := local

FUZZTIME ?= 10s
BENCHTIME ?= 1s

.PHONY: all setup build demo test lint fmt-check vet staticcheck unit proto fuzz bench bench-all clean

all: build

## setup: install what the project needs on this machine if it is missing
setup: $(BIN)/btcd $(BIN)/btcctl
	@bash scripts/setup.sh

$(BIN)/staticcheck:
	GOBIN=$(BIN) $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)

$(BIN)/protoc-gen-go:
	GOBIN=$(BIN) $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)

$(BIN)/protoc-gen-go-grpc:
	GOBIN=$(BIN) $(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)

# btcd, the Bitcoin node that tests submit signed transactions to (hsm/bitcoin/btcdtest).
$(BIN)/btcd $(BIN)/btcctl:
	GOBIN=$(BIN) $(GO) install github.com/btcsuite/btcd@$(BTCD_VERSION) github.com/btcsuite/btcd/cmd/btcctl@$(BTCD_VERSION)

## build: build the opencustody binary into ./bin
build:
	$(GO) build -o bin/opencustody ./cmd/opencustody

## demo: setup, build, then run every part on this machine and walk a 2-of-3 transfer to a btcd node
demo: setup build
	./bin/opencustody demo

## test: setup, then formatting, vet, staticcheck and every test under -race
test: setup $(BIN)/btcd $(BIN)/btcctl lint unit

# unit runs the tests with a throwaway PostgreSQL server on a loopback port
# (scripts/with-postgres.sh starts it, sets OPENCUSTODY_TEST_POSTGRES, and
# stops it when the tests end, passed or failed).
# OPENCUSTODY_REQUIRE_BROWSER=1: the web view's browser test fails, instead
# of skipping, when Chromium is missing (setup installs it).
unit: $(BIN)/btcd $(BIN)/btcctl
	OPENCUSTODY_REQUIRE_BROWSER=1 bash scripts/with-postgres.sh $(GO) test -race -count=1 -timeout 30m ./...

## lint: gofmt check, go vet and staticcheck
lint: fmt-check vet staticcheck

fmt-check:
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go' -not -path './.bin/*')); \
	if [ -n "$$out" ]; then echo "gofmt would change these files (run gofmt -w):"; echo "$$out"; exit 1; fi

vet:
	$(GO) vet ./...

staticcheck: $(BIN)/staticcheck
	$(BIN)/staticcheck ./...

## proto: regenerate the committed protobuf code (installs protoc and the pinned generators)
proto: $(BIN)/protoc-gen-go $(BIN)/protoc-gen-go-grpc
	@bash scripts/setup.sh proto
	protoc --proto_path=protocol/pb --go_out=protocol/pb --go_opt=paths=source_relative protocol/pb/*.proto
	protoc --proto_path=protocol/apipb --go_out=protocol/apipb --go_opt=paths=source_relative \
		--go-grpc_out=protocol/apipb --go-grpc_opt=paths=source_relative protocol/apipb/*.proto

## fuzz: run every fuzz target for FUZZTIME (default 10s) each
fuzz:
	@bash scripts/fuzz.sh $(FUZZTIME)

## bench: measure the speed and memory figures and print them as one table (scripts/bench.sh)
bench: setup
	@BENCHTIME=$(BENCHTIME) bash scripts/bench.sh

## bench-all: every Go benchmark in the module, as go test prints them
bench-all: setup
	$(GO) test -run '^$$' -bench . -benchmem -benchtime $(BENCHTIME) ./...

clean:
	rm -rf bin .bin

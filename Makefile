# pasvgate: the two commands that matter are `make demo` and `make test`.
# Both do their own set-up on a fresh Debian machine as root.
GO      ?= go
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
BIN     := bin/pasvgate
# How long each fuzz target runs under `make fuzz`.
FUZZTIME ?= 5m

.PHONY: all build deps test demo bench fuzz lint clean

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-X main.version=$(VERSION)" -o $(BIN) ./cmd/pasvgate

# deps installs what the tests need: Debian packages (iptables, FTP servers
# and clients) and the Go modules.
deps:
	bash test/install-deps.sh
	$(GO) mod download

test: deps build
	$(GO) vet ./...
	CGO_ENABLED=0 $(GO) build ./...
	# The proxy and the binary's own code under the race detector; every
	# other package as it ships.
	$(GO) test -race -count=1 -timeout 10m ./proxy/... ./cmd/...
	$(GO) test -count=1 -timeout 18m $$($(GO) list ./... | grep -v -e '/pasvgate/proxy' -e '/pasvgate/cmd/')
	# The pasvgate cells of the interop suite again, on iptables-legacy
	# and with the nftables backend (the gw's FORWARD DROP gets no rule:
	# pasvgate adds its own accept, --host-firewall auto). The two runs
	# go side by side, each in namespaces of its own, which halves their
	# time (they mostly wait on their peers); their output follows in
	# order, and either failing fails the target.
	d=$$(mktemp -d); \
	PASVGATE_INTEROP_MODES=pasvgate PASVGATE_INTEROP_IPTABLES=/usr/sbin/iptables-legacy \
		$(GO) test -count=1 -timeout 10m ./test/interop > $$d/legacy.log 2>&1 & legacy=$$!; \
	PASVGATE_INTEROP_MODES=pasvgate PASVGATE_INTEROP_BACKEND=nftables \
		$(GO) test -count=1 -timeout 10m ./test/interop > $$d/nftables.log 2>&1; nft=$$?; \
	wait $$legacy; legacy=$$?; \
	echo "interop on iptables-legacy:"; cat $$d/legacy.log; \
	echo "interop with the nftables backend:"; cat $$d/nftables.log; \
	rm -rf $$d; test $$legacy -eq 0 && test $$nft -eq 0

# demo runs the main job on a built-in netns lab (root); `pasvgate demo`
# is the rootless loopback version.
demo:
	bash test/demo.sh

# bench compares pasvgate (iptables-nft and -legacy, nftables, default flags),
# the kernel's FTP helper, plain routing, the floor (a plain relay with one
# install per transfer, and without) and ProFTPD mod_proxy in one netns lab,
# rounds interleaved (root; ~6 minutes), after the proxy's micro-benchmarks:
# the line paths a fixed 20000 times, the capture reader for Go's default
# second (a pass over its 20000-frame capture takes about 17 ms); then the
# FTPS bench (~10 minutes): direct TLS, pasvgate PROT P, PROT C and plain,
# and mod_proxy with FTPS on both legs.
bench: deps build
	$(GO) test -run '^$$' -bench . -benchtime 20000x ./proxy ./proxy/ftp
	$(GO) test -run '^$$' -bench . ./proxy/sniff
	$(GO) run ./test/bench -pasvgate $(BIN)
	$(GO) run ./test/bench -tls -pasvgate $(BIN)

# fuzz runs every fuzz target (the wire codec, the capture extractor) for
# FUZZTIME each.
fuzz:
	for p in ./proxy/ftp ./proxy/sniff; do \
		for f in $$($(GO) test -list '^Fuzz' $$p | grep ^Fuzz); do \
			$(GO) test $$p -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) -parallel 1 || exit 1; \
		done; \
	done

lint:
	gofmt -l . | (! grep .)
	$(GO) vet ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@latest ./...

clean:
	rm -rf bin

# ddraid — make targets. `make demo` and `make test` are the two commands a
# new user needs; see README.md.

GO       ?= go
BIN      := bin/ddraid
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -s -w -X main.version=$(VERSION)
# Debian packages the tests drive (real NBD clients, fault injection, FUSE,
# the shells the completion scripts are for).
TEST_TOOLS := nbdkit:nbdkit nbdinfo:libnbd-bin nbdcopy:libnbd-bin nbdfuse:libnbd-bin \
	nbdsh:python3-libnbd qemu-io:qemu-utils qemu-img:qemu-utils fio:fio fusermount3:fuse3 \
	mkfs.ext4:e2fsprogs e2fsck:e2fsprogs qemu-nbd:qemu-utils \
	rpm:rpm lintian:lintian systemd-analyze:systemd dpkg-deb:dpkg man:man-db \
	zsh:zsh fish:fish
FUZZTIME ?= 60s
# Packages (make package): nfpm comes from the tools module (tools/go.mod),
# built once into bin/nfpm.
NFPM        := bin/nfpm
PKG_VERSION ?= $(shell sh packaging/version.sh 2>/dev/null || echo 0.0.0)
PKG_BUILD   := dist/build
PKG_DATE    := $(shell git log -1 --format=%cs 2>/dev/null)

.PHONY: all build demo test test-deps test-ui unit e2e bench fuzz vet clean package packaging/ddraid.toml drills

all: build

build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o $(BIN) ./cmd/ddraid

demo: build
	./$(BIN) demo

# package builds dist/ddraid_VERSION_amd64.deb and dist/ddraid-VERSION.x86_64.rpm
# (see docs/install.md); the binary inside reports the package version.
package: $(NFPM)
	$(MAKE) build VERSION=$(PKG_VERSION)
	rm -rf $(PKG_BUILD) dist/ddraid_*_amd64.deb dist/ddraid-*.x86_64.rpm && mkdir -p $(PKG_BUILD)
	cp $(BIN) $(PKG_BUILD)/ddraid
	./$(BIN) config check --config packaging/ddraid.toml >/dev/null
	./$(BIN) man --date=$(PKG_DATE) | gzip -9n > $(PKG_BUILD)/ddraid.1.gz
	./$(BIN) completion bash > $(PKG_BUILD)/ddraid.bash
	./$(BIN) completion zsh > $(PKG_BUILD)/_ddraid
	./$(BIN) completion fish > $(PKG_BUILD)/ddraid.fish
	for p in postinstall preremove postremove; do \
		sed "s/@PHASE@/$$p/" packaging/scripts/maintainer.sh > $(PKG_BUILD)/$$p.sh; done
	printf 'ddraid (%s) unstable; urgency=medium\n\n  * Built from git commit %s.\n\n -- %s  %s\n' \
		'$(PKG_VERSION)' "$$(git rev-parse HEAD)" \
		'ddraid maintainers <maintainers@users.noreply.h-seed-43e9e68b.example>' \
		"$$(git log -1 --format=%cD)" | gzip -9n > $(PKG_BUILD)/changelog.gz
	PKG_VERSION=$(PKG_VERSION) $(NFPM) package --config packaging/nfpm.yaml \
		--packager deb --target dist/ddraid_$(PKG_VERSION)_amd64.deb
	PKG_VERSION=$(PKG_VERSION) $(NFPM) package --config packaging/nfpm.yaml \
		--packager rpm --target dist/ddraid-$(PKG_VERSION).x86_64.rpm

$(NFPM):
	cd tools && CGO_ENABLED=0 $(GO) build -o ../$(NFPM) github.com/goreleaser/nfpm/v2/cmd/nfpm

# packaging/ddraid.toml is `ddraid config default`; a test keeps them equal.
packaging/ddraid.toml:
	$(GO) run ./cmd/ddraid config default > $@

# test-deps installs the Debian packages the tests need when a tool is missing.
test-deps:
	@missing=""; for t in $(TEST_TOOLS); do \
		cmd=$${t%%:*}; pkg=$${t##*:}; \
		command -v $$cmd >/dev/null 2>&1 || [ -x /usr/sbin/$$cmd ] || [ -x /sbin/$$cmd ] || missing="$$missing $$pkg"; \
	done; \
	python3 -c 'import nbd' >/dev/null 2>&1 || /usr/bin/python3 -c 'import nbd' >/dev/null 2>&1 || missing="$$missing python3-libnbd"; \
	if [ -n "$$missing" ]; then \
		pkgs=$$(echo $$missing | tr ' ' '\n' | sort -u | tr '\n' ' '); \
		echo "installing test tools: $$pkgs"; \
		SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$pkgs >/dev/null; \
	fi

vet:
	$(GO) vet ./...
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed: $$out"; exit 1; fi

test: test-deps vet
	$(GO) test -race -timeout 20m ./blockdev/... ./raid/... ./internal/... ./bitmap/... ./resync/... ./lockd/... ./cluster/...
	# -count=1: the end-to-end tests build and run the ddraid binary, which
	# go test's result cache cannot see.
	$(GO) test -count=1 -timeout 40m ./cmd/... ./tests/...
	$(MAKE) test-ui

# test-ui opens the status page in headless Chromium (installed when
# missing) and checks what it renders and a screenshot.
test-ui:
	@command -v chromium >/dev/null 2>&1 || { SUDO=""; [ "$$(id -u)" = 0 ] || SUDO=sudo; \
		echo "installing chromium"; $$SUDO apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium fonts-dejavu-core >/dev/null; }
	$(GO) test -tags ui -count=1 -run '^TestUI' ./tests/

# drills runs the cluster recovery drills (tests/drill_cluster_test.go;
# docs/drills.md) with their one-line summaries. make test runs them too.
drills: test-deps
	$(GO) test -count=1 -v -timeout 20m -run '^TestDrillCluster' ./tests/

# bench compares ddraid with nbdkit and qemu-nbd (fio, same run), measures
# rebuild speed and foreground IO during a rebuild, then raid35 over slow
# simulated disks (bench-members), then cluster mode (bench-cluster); then
# Go micro-benchmarks.
# BENCH_RUNTIME sets seconds per fio case.
bench: build test-deps
	bash bench/run.sh
	bash bench/rebuild.sh
	$(MAKE) --no-print-directory bench-members
	$(MAKE) --no-print-directory bench-cluster
	$(GO) test -run '^$$' -bench . -benchmem ./raid/ ./blockdev/...

# bench-members reproduces the Raid 3.5 speed claims: raid35 over 3, 5 and 9
# slow disks (nbdkit noparallel + delay + rate) against one such disk, with
# PASS/MISS against the goals of issue 5; the table goes to
# bin/members.tsv and the plot (gnuplot-nox, installed if missing) to
# bin/raid35-scaling.png (copy it to docs/ to publish it).
.PHONY: bench-members
bench-members: build test-deps
	BENCH_RESULTS=bin/members.tsv bash bench/members.sh
	bash bench/plot-members.sh bin/members.tsv bin/raid35-scaling.png

# bench-cluster measures cluster mode (issue 7): three agents on loopback,
# kill -9 of one of two writers (the survivor's IO stall, the takeover
# resync of a 1 GiB dirty set) and two writers against one on a
# latency-bound path (--serve-member-delay); PASS/MISS against the goals.
# See bench/cluster.sh for its BENCH_CLUSTER_* settings.
.PHONY: bench-cluster
bench-cluster: build
	bash bench/cluster.sh

fuzz:
	@# every Fuzz target of the tree (git grep finds new ones), FUZZTIME each
	@for f in $$(git grep -l '^func Fuzz' -- '*_test.go' ':!bench'); do \
		dir=./$$(dirname $$f); \
		for t in $$(sed -n 's/^func \(Fuzz[A-Za-z0-9_]*\)(.*/\1/p' $$f); do \
			echo "== $$dir $$t"; \
			$(GO) test -run '^$$' -fuzz "^$$t$$" -fuzztime $(FUZZTIME) $$dir || exit 1; \
		done; \
	done

clean:
	rm -rf bin dist ddraid-demo

# bench-lockd compares lockd (3 nodes, real transport) with etcd's
# concurrency.Mutex on an embedded etcd, on loopback, in one run. It is a
# separate Go module (bench/lockd) so etcd stays out of go.mod.
# BENCH_LOCKD_FLAGS: e.g. -duration=10s -systems=etcd,lockd
.PHONY: bench-lockd
bench-lockd:
	cd bench/lockd && $(GO) run . $(BENCH_LOCKD_FLAGS)

# acestream-edge: `make run` to try it, `make test` to check it.
CARGO ?= cargo
SIM_ADDR ?= 127.0.0.1:6878
CONF ?= conf/acestream-edge.yaml
ID ?= 0123456789abcdef0123456789abcdef01234567
# `make run` builds and runs this profile: `release` for people; check-docs runs `debug`, the
# build `make test` just made (the README's lines need the pair, not its speed).
PROFILE ?= release
PROFILE_FLAG = $(if $(filter release,$(PROFILE)),--release,)

.PHONY: run test bench bench-quick lint check-conf check-conf-built check-docs deps deps-test docker-native

# Pingora's build needs cmake (libz-ng-sys); the tests use ffprobe/ffmpeg and mpv as real players.
deps:
	@command -v cmake >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y cmake; \
	  else echo "cmake is missing; run: sudo apt-get install -y cmake"; exit 1; fi; }

deps-test: deps
	@command -v ffprobe >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y ffmpeg; \
	  else echo "ffprobe is missing; run: sudo apt-get install -y ffmpeg"; exit 1; fi; }
	@command -v mpv >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y mpv; \
	  else echo "mpv is missing (its test is skipped); run: sudo apt-get install -y mpv"; fi; }
	@command -v chromium >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium; \
	  else echo "chromium is missing (the browser test is skipped); run: sudo apt-get install -y chromium"; fi; }

run: deps
	$(CARGO) build $(PROFILE_FLAG) --bins --features sim
	@echo ""
	@echo "  simulator on http://$(SIM_ADDR) (like a real engine: 3 s prebuffer, then a 20 MB burst, then 4 Mbit/s),"
	@echo "  proxy with $(CONF). Try:"
	@echo "    curl -s 'http://127.0.0.1:8000/ace/getstream?id=$(ID)' | head -c 4000000 > /tmp/a.ts"
	@echo "    mpv 'http://127.0.0.1:8000/ace/getstream?id=$(ID)'"
	@echo "    vlc 'http://127.0.0.1:8000/ace/getstream?id=$(ID)'"
	@echo "    mpv 'http://127.0.0.1:8000/ace/manifest.m3u8?id=$(ID)'   (HLS)"
	@echo "    http://127.0.0.1:8000/   (the dashboard; #preview=$(ID) plays that id)"
	@echo "  Ctrl-C stops both."
	@echo ""
	@# The simulator runs in its own session (setsid), so Ctrl-C reaches the proxy alone: it stops its
	@# engine sessions first, then the trap stops the simulator. The proxy starts a second later, so
	@# its first health probe finds the simulator listening.
	@setsid ./target/$(PROFILE)/ace-engine-sim --listen $(SIM_ADDR) --prebuffer 3s --burst-bytes 20000000 & SIM=$$!; \
	  trap 'kill $$SIM 2>/dev/null' EXIT INT TERM; \
	  sleep 1; \
	  ./target/$(PROFILE)/acestream-edge -c $(CONF)

# Every example config passes `-t` (with the binary the tests built; `make check-conf` alone
# builds it first).
check-conf:
	$(CARGO) build --bin acestream-edge
	@$(MAKE) --no-print-directory check-conf-built

# The README's shell lines, run as written against `make run`'s pair (the debug build; lines that
# need a display, root, systemd or Docker say so and are skipped).
check-docs: deps
	@scripts/check-docs

check-conf-built:
	@for f in conf/*.yaml; do \
	  out=$$(./target/debug/acestream-edge -t -c $$f) || { echo "$$f: $$out"; exit 1; }; \
	  echo "$$f: $$out"; done

# The tests mostly wait on real time (streams at their bitrate, players at playback pace), so they
# run 8 at a time under cargo-nextest (one process per test; the machine's toolchain has it);
# without nextest, `cargo test` runs them. Benches are compiled, not run.
TEST_THREADS ?= 8
test: deps-test
	@if $(CARGO) nextest --version >/dev/null 2>&1; then \
	  $(CARGO) nextest run --lib --bins --tests --test-threads $(TEST_THREADS) --no-fail-fast && \
	  $(CARGO) test --benches --no-run; \
	else \
	  $(CARGO) test --all-targets; \
	fi
	@$(MAKE) --no-print-directory check-conf-built
	@$(MAKE) --no-print-directory check-docs

# Side-by-side load benchmarks (release build; about 15 minutes) and criterion micro-benchmarks.
# `make bench-quick` runs one small pass of each scenario.
bench: deps
	$(CARGO) bench --bench loadgen 2>/dev/null | tee target/bench-table.md
	$(CARGO) bench --bench micro

bench-quick: deps
	$(CARGO) bench --bench loadgen -- quick

lint: deps
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

# The Dockerfile's stages without Docker: its exact release build, then its runtime layout under
# target/docker-root, checked with -t (tests/deploy.rs also starts that layout and runs its
# HEALTHCHECK, with the dev binary).
docker-native: deps
	$(CARGO) build --release --locked --bin acestream-edge
	install -D -m 755 target/release/acestream-edge target/docker-root/usr/local/bin/acestream-edge
	install -D -m 644 deploy/docker/acestream-edge.yaml target/docker-root/etc/acestream-edge/acestream-edge.yaml
	target/docker-root/usr/local/bin/acestream-edge -t -c target/docker-root/etc/acestream-edge/acestream-edge.yaml

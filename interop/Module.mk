# Peers in other languages that speak the chapters' layouts and protocols (interop/README.md).
#
#   make interop    the Python peers and the Rust readers against the C++ programs, both ways
#
# Included from mk/cross.mk.

# The Rust readers of chapters 04 and 06 (one cargo build makes both), built with Debian's cargo
# and Debian's packaged crates, offline: a cargo home in the build folder (never ~/.cargo) whose
# config replaces crates.io with Debian's crate directory. /usr/bin explicitly: a rustup
# toolchain earlier in PATH is not Debian's.
RUST_BUILD := $(abspath $(BUILD))/interop/rust
RUST_READER := $(RUST_BUILD)/release/fdpass_reader
RUST_CARGO_HOME := $(RUST_BUILD)/cargo-home

$(RUST_READER): interop/rust/Cargo.toml interop/rust/Cargo.lock $(wildcard interop/rust/src/*.rs)
	@scripts/ensure-packages "the Rust readers of interop/: Debian's cargo and its libc crate, offline" \
		cargo librust-libc-dev
	@mkdir -p $(RUST_CARGO_HOME)
	@printf '%s\n' '[source.crates-io]' 'replace-with = "debian"' '[source.debian]' \
		'directory = "/usr/share/cargo/registry"' '[net]' 'offline = true' > $(RUST_CARGO_HOME)/config.toml
	CARGO_HOME=$(RUST_CARGO_HOME) RUSTC=/usr/bin/rustc /usr/bin/cargo build --quiet --release --offline --locked \
		--manifest-path interop/rust/Cargo.toml --target-dir $(RUST_BUILD)

.PHONY: interop
interop: ## run the Python peers and the Rust readers of interop/ against the C++ programs, both ways
	@scripts/ensure-packages "Catch2 runs the interop tests; Debian's python3 runs the Python peers" catch2 python3
	@$(MAKE) --no-print-directory test-binaries $(RUST_READER)
	@scripts/run-tests $(TEST_RUNNER) '[interop]'

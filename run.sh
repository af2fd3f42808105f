#!/usr/bin/env bash
# Runs tinyedge on embedded defaults (no config file needed), on a fresh Debian machine with
# only the Rust toolchain: installs protobuf-compiler (the containerd gRPC bindings are
# generated at build time), containerd and runc (the agent runs modules on them), starts
# containerd if nothing listens on its default socket (and stops it again on exit), then
# builds and runs `tinyedge run`. Extra arguments go to tinyedge (e.g. `./run.sh --config x.toml`).
set -euo pipefail
cd "$(dirname "$0")"
. scripts/packages.sh
ensure_packages protobuf-compiler containerd runc

socket=/run/containerd/containerd.sock
started=""
if [ ! -S "$socket" ] && [ "$(id -u)" -eq 0 ]; then
    mkdir -p tinyedge-data
    echo "run.sh: starting containerd (log: tinyedge-data/containerd.log)" >&2
    containerd >tinyedge-data/containerd.log 2>&1 &
    started=$!
    trap 'kill "$started" 2>/dev/null || true' EXIT
    for _ in $(seq 100); do [ -S "$socket" ] && break; sleep 0.1; done
fi
cargo build --release --bin tinyedge
./target/release/tinyedge "${@:-run}"

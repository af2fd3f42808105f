#!/usr/bin/env bash
# The whole test suite, on a fresh Debian machine with only the Rust toolchain.
# Installs the Debian packages the tests drive (mosquitto and its clients), runs every test of
# the workspace, and leaves nothing running: each test starts and stops the processes it needs.
set -euo pipefail
cd "$(dirname "$0")"

packages=(mosquitto mosquitto-clients)
missing=()
for pkg in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    echo "test.sh: installing ${missing[*]}"
    SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
# Debian's mosquitto package may start a system broker on 1883; the tests use their own
# ports, but `tinyedge run` on defaults wants 1883, so stop it if it is running here.
if command -v systemctl >/dev/null 2>&1 && systemctl is-active --quiet mosquitto 2>/dev/null; then
    systemctl stop mosquitto || true
fi

# One target directory for everything; tests run the real binary built here.
cargo test --workspace --all-targets "$@"

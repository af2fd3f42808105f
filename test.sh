#!/usr/bin/env bash
# The whole test suite, on a fresh Debian machine with only the Rust toolchain.
# Installs the Debian packages the tests drive (mosquitto and its clients) and the Azure IoT
# Python SDK (into target/pysdk), runs every test of
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

# The Azure IoT Python SDK (unchanged, from PyPI) drives the hub in tests/port_8883.rs.
PYSDK="${TINYEDGE_PYSDK:-$PWD/target/pysdk}"
if [ ! -d "$PYSDK/azure/iot/device" ]; then
    command -v python3 >/dev/null 2>&1 || { SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"; $SUDO apt-get install -y -qq python3 python3-pip >/dev/null; }
    python3 -m pip --version >/dev/null 2>&1 || { SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"; $SUDO apt-get install -y -qq python3-pip >/dev/null; }
    echo "test.sh: installing azure-iot-device into $PYSDK"
    python3 -m pip install --quiet --disable-pip-version-check --target "$PYSDK" "azure-iot-device==2.14.0" \
        || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages --target "$PYSDK" "azure-iot-device==2.14.0"
fi
export TINYEDGE_PYSDK="$PYSDK"

# One target directory for everything; tests run the real binary built here.
cargo test --workspace --all-targets "$@"

#!/usr/bin/env bash
# The whole test suite, on a fresh Debian machine with only the Rust toolchain.
# Installs the Debian packages the tests drive (mosquitto and its clients, containerd, runc,
# docker-registry, apache2-utils, busybox-static, protobuf-compiler, nodejs/npm) and the Azure IoT
# Python SDK (into target/pysdk) and Node.js SDK (into target/nodesdk), runs every test of
# the workspace, and leaves nothing running: each test starts and stops the processes it needs.
set -euo pipefail
cd "$(dirname "$0")"

# mosquitto: the cloud stand-in and MQTT clients; containerd, runc, docker-registry and
# busybox-static: the agent tests (apache2-utils: htpasswd for a registry with credentials; openssl:
# s_client for the fault suite's TLS cases) (containerd and the registry are started by the tests
# themselves, images are built from busybox-static); protobuf-compiler: the containerd gRPC
# bindings are generated at build time.
. scripts/packages.sh
ensure_packages mosquitto mosquitto-clients containerd runc docker-registry apache2-utils busybox-static protobuf-compiler openssl python3-qpid-proton
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
# The Prometheus project's Python client parses the /metrics text in tests/metrics.rs.
PYPROM="${TINYEDGE_PYPROM:-$PWD/target/pyprom}"
if [ ! -d "$PYPROM/prometheus_client" ]; then
    echo "test.sh: installing prometheus-client into $PYPROM"
    python3 -m pip install --quiet --disable-pip-version-check --target "$PYPROM" "prometheus-client==0.21.1" \
        || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages --target "$PYPROM" "prometheus-client==0.21.1"
fi
export TINYEDGE_PYPROM="$PYPROM"
# amqtt (a third-party asyncio MQTT broker library) carries the scripted IoT Hub, tests/cloud/iothub.py.
PYCLOUD="${TINYEDGE_PYCLOUD:-$PWD/target/pycloud}"
if [ ! -d "$PYCLOUD/amqtt" ]; then
    echo "test.sh: installing amqtt into $PYCLOUD"
    python3 -m pip install --quiet --disable-pip-version-check --target "$PYCLOUD" "amqtt==0.12.1" \
        || python3 -m pip install --quiet --disable-pip-version-check --break-system-packages --target "$PYCLOUD" "amqtt==0.12.1"
fi
export TINYEDGE_PYCLOUD="$PYCLOUD"
# The Azure IoT Node.js SDK on its AMQP transport (unchanged, from npm) drives the AMQP endpoint
# in tests/amqp.rs; Debian's Node.js and npm unless a node and npm are already installed.
command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || ensure_packages nodejs npm
NODESDK="$PWD/target/nodesdk"
if [ ! -d "$NODESDK/node_modules/azure-iot-device-amqp" ]; then
    echo "test.sh: installing azure-iot-device and azure-iot-device-amqp into $NODESDK"
    mkdir -p "$NODESDK"
    npm install --silent --no-audit --no-fund --prefix "$NODESDK" azure-iot-device@1.18.4 azure-iot-device-amqp@1.14.4
fi

# One target directory for everything; tests run the real binary built here.
cargo test --workspace --all-targets "$@"
# The hub-only build (`--no-default-features`, no agent) must keep compiling.
cargo build --quiet -p tinyedge --bin tinyedge --no-default-features

#!/usr/bin/env bash
# Runs cross-built tinyedge binaries on this host, under qemu user-mode emulation for ARM:
#   (a) `tinyedge --version` prints "tinyedge <version>";
#   (b) a routing run: the binary starts with a deployment routing module a's messages to
#       module b's input "in"; mosquitto_sub as b must receive what mosquitto_pub as a sends.
# Prints PASS/FAIL per target and the startup time (spawn to MQTT port open); exits non-zero
# when any target fails.
#
# usage: cross/smoke-test.sh [--dist DIR] [--results FILE] [TARGET...]
#
# The binary tested is the one in DIR/tinyedge-<version>-<target>.tar.gz (default cross/dist;
# its SHA256SUMS is checked first), else target/<target>/release/tinyedge. Without TARGETs,
# every target with a tarball or a binary. --results appends "<target> PASS|FAIL|SKIP <ms>"
# lines (for build-release.sh's table). Missing tools (qemu-user-static, the target's libc,
# mosquitto-clients) are installed with apt-get.
set -euo pipefail

# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# Under qemu a 2-core CI machine starts the runtime in well under a second; 30 s only bounds
# a hung start.
STARTUP_TIMEOUT_S=30
# mosquitto_sub's own wait for the routed message (-W).
RECEIVE_TIMEOUT_S=20
# How long a stopped runtime gets to exit on SIGTERM before SIGKILL.
STOP_TIMEOUT_S=5
# The edge device key of the smoke config: base64 of the bytes 0..31, as in tests/common.
DEVICE_KEY_B64="AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8="

DIST_DIR="${DIST_DIR_DEFAULT}"
RESULTS_FILE=""
TARGETS=()

usage() {
    grep -m 1 '^# usage:' "${BASH_SOURCE[0]}" | sed 's/^# //'
}

parse_args() {
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --dist) DIST_DIR="${2:?--dist needs a directory}"; shift 2 ;;
            --results) RESULTS_FILE="${2:?--results needs a file}"; shift 2 ;;
            -h | --help) usage; exit 0 ;;
            -*) log "unknown option: $1"; usage; exit 2 ;;
            *) TARGETS+=("$1"); shift ;;
        esac
    done
}

WORK=""
PIDS=()
RUN=()
LOGIN=()
RUNTIME_PID=""
RESULT=""
STARTUP_MS="-"
# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
    local pid
    for pid in "${PIDS[@]}"; do kill -KILL "${pid}" 2>/dev/null || true; done
    [[ -z "${WORK}" ]] || rm -rf -- "${WORK}"
}

# The binary to test for a target, or nothing. A tarball is unpacked and its checksums
# verified, so the smoke test covers what is shipped.
binary_of() {
    local target="$1" version="$2"
    local tarball="${DIST_DIR}/tinyedge-${version}-${target}.tar.gz"
    if [[ -f "${tarball}" ]]; then
        local into="${WORK}/${target}/unpacked"
        if ! { mkdir -p "${into}" && tar -xzf "${tarball}" -C "${into}"; }; then
            log "${target}: cannot unpack ${tarball}"
            return 1
        fi
        local dir="${into}/tinyedge-${version}-${target}"
        (cd "${dir}" && sha256sum --quiet -c SHA256SUMS) >&2 || { log "${target}: SHA256SUMS in ${tarball} does not match"; return 1; }
        log "${target}: testing ${tarball}"
        printf '%s\n' "${dir}/tinyedge"
    elif [[ -f "${TARGET_DIR}/${target}/release/tinyedge" ]]; then
        log "${target}: testing ${TARGET_DIR}/${target}/release/tinyedge (no tarball in ${DIST_DIR})"
        printf '%s\n' "${TARGET_DIR}/${target}/release/tinyedge"
    else
        return 1
    fi
}

# Sets RUN to the command prefix that runs the target's binary here, installing qemu and the
# target's libc when missing. Returns 2 when this host cannot run the target at all.
prepare_runner() {
    local target="$1" binary="$2" spec qemu sysroot libc
    spec="$(emulator_of "${target}")" || return 2
    if [[ "${spec}" == native ]]; then
        RUN=("${binary}")
        return 0
    fi
    read -r qemu sysroot libc <<<"${spec}"
    command -v "${qemu}" >/dev/null 2>&1 || apt_install qemu-user-static || return 1
    # The glibc targets load /lib/ld-linux-*.so from the sysroot; musl ones are static.
    if [[ "${target}" == *-gnu* ]]; then
        apt_install "${libc}" || return 1
    fi
    RUN=("${qemu}" -L "${sysroot}" "${binary}")
}

# A TCP port on 127.0.0.1 that nothing listens on. Bash's /dev/tcp connect fails on a
# closed port; random ports from the dynamic range keep parallel runs apart.
free_port() {
    local port attempt
    for attempt in $(seq 1 100); do
        port=$((20000 + (RANDOM * 32768 + RANDOM) % 40000))
        if ! (: <"/dev/tcp/127.0.0.1/${port}") 2>/dev/null; then
            printf '%s\n' "${port}"
            return 0
        fi
    done
    log "no free port after ${attempt} attempts"
    return 1
}

port_open() { (: <"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# The config and the deployment of the routing run (shape as tests/common/mod.rs deployment()).
write_config() {
    local dir="$1" port="$2"
    cat >"${dir}/deployment.json" <<'EOF'
{"modulesContent":{
 "$edgeAgent":{"properties.desired":{"schemaVersion":"1.1","runtime":{"type":"docker","settings":{}},
   "systemModules":{"edgeAgent":{"type":"docker","settings":{"image":"tinyedge","createOptions":""}},
                    "edgeHub":{"type":"docker","status":"running","restartPolicy":"always","settings":{"image":"tinyedge","createOptions":""}}},
   "modules":{
     "a":{"version":"1.0","type":"docker","status":"running","restartPolicy":"always","settings":{"image":"busybox:latest","createOptions":""}},
     "b":{"version":"1.0","type":"docker","status":"running","restartPolicy":"always","settings":{"image":"busybox:latest","createOptions":""}}}}},
 "$edgeHub":{"properties.desired":{"schemaVersion":"1.1",
   "routes":{"aToB":"FROM /messages/modules/a/* INTO BrokeredEndpoint(\"/modules/b/inputs/in\")"},
   "storeAndForwardConfiguration":{"timeToLiveSecs":7200}}}}}
EOF
    cat >"${dir}/config.toml" <<EOF
hostname = "localhost"
iothub_hostname = "smoke.azure-devices.net"
device_id = "gw"
device_key = "${DEVICE_KEY_B64}"
data_dir = "data"
deployment = "deployment.json"
log_level = "info"
[hub]
mqtt = "127.0.0.1:${port}"
mqtts = ""
EOF
}

# Sets LOGIN to (client id, username, password) from `tinyedge identity mqtt-login ID`.
mqtt_login() {
    local config="$1" id="$2" output line
    output="$("${RUN[@]}" --config "${config}" identity mqtt-login "${id}")" || return 1
    LOGIN=("" "" "")
    while IFS= read -r line; do
        case "${line}" in
            client_id=*) LOGIN[0]="${line#client_id=}" ;;
            username=*) LOGIN[1]="${line#username=}" ;;
            password=*) LOGIN[2]="${line#password=}" ;;
        esac
    done <<<"${output}"
    # The values are single-quoted for `eval`; strip the quotes.
    local i
    for i in 0 1 2; do
        LOGIN[i]="${LOGIN[i]#\'}"
        LOGIN[i]="${LOGIN[i]%\'}"
    done
    [[ -n "${LOGIN[0]}" && -n "${LOGIN[1]}" && -n "${LOGIN[2]}" ]]
}

# SIGTERM, then SIGKILL after STOP_TIMEOUT_S; always reaps.
stop_process() {
    local pid="$1" waited=0
    kill -TERM "${pid}" 2>/dev/null || true
    while kill -0 "${pid}" 2>/dev/null && [[ "${waited}" -lt $((STOP_TIMEOUT_S * 10)) ]]; do
        sleep 0.1
        waited=$((waited + 1))
    done
    kill -KILL "${pid}" 2>/dev/null || true
    wait "${pid}" 2>/dev/null || true
}

check_version() {
    local target="$1" version="$2" output started elapsed_ms
    started="$(now_us)"
    output="$("${RUN[@]}" --version 2>&1)" || { log "${target}: --version failed: ${output}"; return 1; }
    elapsed_ms=$((($(now_us) - started) / 1000))
    if [[ "${output}" != "tinyedge ${version}" ]]; then
        log "${target}: --version printed '${output}', expected 'tinyedge ${version}'"
        return 1
    fi
    log "${target}: --version ok ('${output}', ${elapsed_ms} ms)"
}

# Starts the runtime, waits for its port and sets RUNTIME_PID and STARTUP_MS.
start_runtime() {
    local target="$1" dir="$2" port="$3" started deadline
    started="$(now_us)"
    "${RUN[@]}" --config "${dir}/config.toml" run >"${dir}/runtime.log" 2>&1 &
    RUNTIME_PID=$!
    PIDS+=("${RUNTIME_PID}")
    deadline=$((started + STARTUP_TIMEOUT_S * 1000000))
    until port_open "${port}"; do
        if ! kill -0 "${RUNTIME_PID}" 2>/dev/null; then
            log "${target}: the runtime exited before listening; its log:"
            sed 's/^/    /' "${dir}/runtime.log" >&2
            return 1
        fi
        if [[ "$(now_us)" -gt "${deadline}" ]]; then
            log "${target}: no listener on port ${port} after ${STARTUP_TIMEOUT_S} s"
            return 1
        fi
        sleep 0.01
    done
    STARTUP_MS=$((($(now_us) - started) / 1000))
    log "${target}: listening on 127.0.0.1:${port} ${STARTUP_MS} ms after spawn"
}

# b subscribes to its inputs, a publishes one message, b must print it. mosquitto_sub -d
# prints "received SUBACK" once the subscription is in place, so a publishes only then
# (no fixed sleep that a slow emulator could outrun); stdbuf makes it print that line at once
# instead of when its stdout buffer to the file fills.
route_one_message() {
    local target="$1" dir="$2" port="$3" message="hello-from-$1" sub_pid waited=0
    mqtt_login "${dir}/config.toml" b || { log "${target}: identity mqtt-login b failed"; return 1; }
    local sub_login=("${LOGIN[@]}")
    mqtt_login "${dir}/config.toml" a || { log "${target}: identity mqtt-login a failed"; return 1; }
    local pub_login=("${LOGIN[@]}")

    stdbuf -oL mosquitto_sub -h 127.0.0.1 -p "${port}" -V mqttv311 -q 1 -d -v \
        -i "${sub_login[0]}" -u "${sub_login[1]}" -P "${sub_login[2]}" \
        -t 'devices/gw/modules/b/inputs/#' -C 1 -W "${RECEIVE_TIMEOUT_S}" >"${dir}/sub.out" 2>&1 &
    sub_pid=$!
    PIDS+=("${sub_pid}")
    until grep -q 'received SUBACK' "${dir}/sub.out"; do
        if ! kill -0 "${sub_pid}" 2>/dev/null || [[ "${waited}" -ge $((RECEIVE_TIMEOUT_S * 100)) ]]; then
            log "${target}: mosquitto_sub did not subscribe; its output:"
            sed 's/^/    /' "${dir}/sub.out" >&2
            return 1
        fi
        sleep 0.01
        waited=$((waited + 1))
    done

    if ! mosquitto_pub -h 127.0.0.1 -p "${port}" -V mqttv311 -q 1 \
        -i "${pub_login[0]}" -u "${pub_login[1]}" -P "${pub_login[2]}" \
        -t 'devices/gw/modules/a/messages/events/' -m "${message}" >"${dir}/pub.out" 2>&1; then
        log "${target}: mosquitto_pub failed:"
        sed 's/^/    /' "${dir}/pub.out" >&2
        return 1
    fi
    wait "${sub_pid}" || true
    if ! grep -q "^devices/gw/modules/b/inputs/in.* ${message}\$" "${dir}/sub.out"; then
        log "${target}: b did not receive '${message}' on inputs/in; mosquitto_sub printed:"
        sed 's/^/    /' "${dir}/sub.out" >&2
        return 1
    fi
    log "${target}: b received '${message}' on $(grep -o '^devices/gw/modules/b/inputs/in[^ ]*' "${dir}/sub.out")"
}

# One target, start to finish. Sets RESULT (PASS, FAIL or SKIP) and STARTUP_MS.
smoke_target() {
    local target="$1" version="$2" binary port status=0
    RESULT=FAIL
    STARTUP_MS="-"
    local dir="${WORK}/${target}"
    mkdir -p "${dir}"
    binary="$(binary_of "${target}" "${version}")" || { log "${target}: no tarball in ${DIST_DIR} and no ${TARGET_DIR}/${target}/release/tinyedge"; return 1; }
    prepare_runner "${target}" "${binary}" || status=$?
    if [[ "${status}" -eq 2 ]]; then
        RESULT=SKIP
        log "SKIP ${target}: this $(uname -m) host has no way to run it"
        return 0
    elif [[ "${status}" -ne 0 ]]; then
        log "${target}: cannot prepare the emulator (qemu-user-static, target libc)"
        return 1
    fi
    check_version "${target}" "${version}" || return 1
    port="$(free_port)" || return 1
    write_config "${dir}" "${port}"
    start_runtime "${target}" "${dir}" "${port}" || { stop_process "${RUNTIME_PID}"; return 1; }
    status=0
    route_one_message "${target}" "${dir}" "${port}" || status=1
    stop_process "${RUNTIME_PID}"
    if [[ "${status}" -ne 0 ]]; then
        log "${target}: runtime log:"
        sed 's/^/    /' "${dir}/runtime.log" >&2
        return 1
    fi
    RESULT=PASS
}

default_targets() {
    local version="$1" target
    for target in ${KNOWN_TARGETS}; do
        if [[ -f "${DIST_DIR}/tinyedge-${version}-${target}.tar.gz" || -f "${TARGET_DIR}/${target}/release/tinyedge" ]]; then
            printf '%s\n' "${target}"
        fi
    done
}

main() {
    parse_args "$@"
    local version target failed=0
    version="$(release_version)" || { log "cannot read the version from cargo metadata or Cargo.toml"; exit 1; }
    if [[ ${#TARGETS[@]} -eq 0 ]]; then
        mapfile -t TARGETS < <(default_targets "${version}")
        [[ ${#TARGETS[@]} -gt 0 ]] || { log "nothing to test: no tarballs in ${DIST_DIR} and no cross-built binaries under ${TARGET_DIR}"; exit 1; }
    fi
    WORK="$(mktemp -d)"
    trap cleanup EXIT
    if ! command -v mosquitto_sub >/dev/null 2>&1 || ! command -v mosquitto_pub >/dev/null 2>&1; then
        apt_install mosquitto-clients || { log "cannot install mosquitto-clients"; exit 1; }
    fi

    local summary=()
    for target in "${TARGETS[@]}"; do
        if ! smoke_target "${target}" "${version}"; then
            RESULT=FAIL
        fi
        [[ "${RESULT}" != FAIL ]] || failed=1
        summary+=("$(printf '%-4s %-32s startup %s ms' "${RESULT}" "${target}" "${STARTUP_MS}")")
        [[ -z "${RESULTS_FILE}" ]] || printf '%s %s %s\n' "${target}" "${RESULT}" "${STARTUP_MS}" >>"${RESULTS_FILE}"
    done
    printf '%s\n' "${summary[@]}"
    exit "${failed}"
}

main "$@"

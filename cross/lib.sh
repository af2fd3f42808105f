# shellcheck shell=bash
# Helpers shared by cross/build-release.sh and cross/smoke-test.sh: the repo layout, the
# version, the per-target toolchain table, and installing Debian packages on demand.
# Sourced, never run; the caller has already done `set -euo pipefail`.
# The constants are used by the scripts that source this file:
# shellcheck disable=SC2034

CROSS_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO_ROOT="$(cd "${CROSS_DIR}/.." && pwd)"
# Cargo puts target-specific outputs under <target dir>/<triple>/, so one shared target dir
# serves every target without the builds overwriting each other.
TARGET_DIR="${CARGO_TARGET_DIR:-${REPO_ROOT}/target}"
DIST_DIR_DEFAULT="${CROSS_DIR}/dist"
# What a release is made of when no --targets is given (the issue's three gateway targets).
DEFAULT_TARGETS="aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf x86_64-unknown-linux-musl"
# Also buildable on request (--targets): static ARM binaries for gateways whose glibc is older
# than the build host's (see toolchain_of).
KNOWN_TARGETS="${DEFAULT_TARGETS} aarch64-unknown-linux-musl armv7-unknown-linux-musleabihf"

log() { printf '%s\n' "$*" >&2; }

# The release version: the root package's version from `cargo metadata`, else the
# `[workspace.package] version` line of Cargo.toml (when cargo cannot run, e.g. offline
# with a dependency missing from the cache).
release_version() {
    local version=""
    if command -v cargo >/dev/null 2>&1; then
        version="$(cd "${REPO_ROOT}" && cargo metadata --no-deps --format-version 1 --offline 2>/dev/null |
            grep -o '"name":"tinyedge","version":"[^"]*"' | head -n 1 | sed 's/.*"version":"\([^"]*\)"/\1/')" || version=""
    fi
    if [[ -z "${version}" ]]; then
        version="$(awk '
            /^\[/ { in_section = ($0 == "[workspace.package]") }
            in_section && $1 == "version" { gsub(/"/, "", $3); print $3; exit }
        ' "${REPO_ROOT}/Cargo.toml")"
    fi
    [[ -n "${version}" ]] || return 1
    printf '%s\n' "${version}"
}

# Runs a command as root: directly when we are root, through sudo otherwise.
as_root() {
    if [[ "${EUID}" -eq 0 ]]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo "$@"
    else
        log "need root for: $* (not root, and no sudo)"
        return 1
    fi
}

APT_UPDATED=0
# Installs the Debian packages that are not installed yet. `apt-get update` runs at most once
# per script run, and only when something is missing, so a machine that has everything is
# not touched.
apt_install() {
    local missing=() package
    for package in "$@"; do
        dpkg-query -W -f='${Status}' "${package}" 2>/dev/null | grep -q 'install ok installed' ||
            missing+=("${package}")
    done
    [[ ${#missing[@]} -eq 0 ]] && return 0
    if ! command -v apt-get >/dev/null 2>&1; then
        log "cannot install ${missing[*]}: no apt-get (not Debian/Ubuntu); install them by hand"
        return 1
    fi
    log "installing ${missing[*]} (apt-get)"
    # apt and dpkg are chatty; their output is shown only when they fail.
    local output
    output="$(mktemp)" || return 1
    if [[ "${APT_UPDATED}" -eq 0 ]]; then
        if ! as_root apt-get update -qq >"${output}" 2>&1; then
            cat "${output}" >&2
            rm -f -- "${output}"
            return 1
        fi
        APT_UPDATED=1
    fi
    if ! as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${missing[@]}" >"${output}" 2>&1; then
        cat "${output}" >&2
        rm -f -- "${output}"
        return 1
    fi
    rm -f -- "${output}"
}

# The per-target toolchain table, for builds without Docker on an x86_64 Debian host.
# Prints "<C compiler> <binutils prefix> <Debian packages...>": the compiler is the linker and
# also builds ring's C and assembly; the prefix names the target's binutils (strip, ar), "-"
# meaning the host's own; the packages bring both and the target's libc.
# The musl targets link statically with the C runtime that rustup ships for them
# (self-contained linking), so any C compiler of the right architecture will do as linker.
toolchain_of() {
    case "$1" in
        aarch64-unknown-linux-gnu | aarch64-unknown-linux-musl)
            echo "aarch64-linux-gnu-gcc aarch64-linux-gnu- gcc-aarch64-linux-gnu libc6-dev-arm64-cross" ;;
        armv7-unknown-linux-gnueabihf | armv7-unknown-linux-musleabihf)
            echo "arm-linux-gnueabihf-gcc arm-linux-gnueabihf- gcc-arm-linux-gnueabihf libc6-dev-armhf-cross" ;;
        x86_64-unknown-linux-musl)
            # musl-gcc compiles ring's C against musl's headers; binutils are the host's.
            echo "musl-gcc - musl-tools" ;;
        *) return 1 ;;
    esac
}

# How smoke-test.sh runs a target's binary on this host: "native", or
# "<qemu> <sysroot> <libc package>" for user-mode emulation; the sysroot holds the target's
# dynamic loader and glibc (Debian's libc6-*-cross), which static musl binaries do not need.
# Fails for a target this host cannot run.
emulator_of() {
    local host
    host="$(uname -m)"
    case "$1" in
        x86_64-*) [[ "${host}" == x86_64 ]] && echo native ;;
        aarch64-*)
            if [[ "${host}" == aarch64 ]]; then
                echo native
            else
                echo "qemu-aarch64-static /usr/aarch64-linux-gnu libc6-arm64-cross"
            fi
            ;;
        armv7-*) echo "qemu-arm-static /usr/arm-linux-gnueabihf libc6-armhf-cross" ;;
        *) return 1 ;;
    esac
}

# Microseconds since the epoch, from bash's own clock (no fork, so it does not skew timings).
# EPOCHREALTIME uses the locale's decimal separator, hence "drop every non-digit".
now_us() {
    local t="${EPOCHREALTIME}"
    printf '%s\n' "${t//[!0-9]/}"
}

# File size in bytes.
size_of() { stat -c %s "$1"; }

# "1234567 (1.18 MiB)"
human_size() {
    awk -v b="$1" 'BEGIN { printf "%d (%.2f MiB)", b, b / 1048576 }'
}

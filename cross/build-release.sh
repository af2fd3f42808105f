#!/usr/bin/env bash
# Builds release tarballs of tinyedge for small gateways:
#   cross/dist/tinyedge-<version>-<target>.tar.gz   one per target
#   cross/dist/SHA256SUMS                           of the tarballs
# Each tarball holds one directory tinyedge-<version>-<target>/ with the stripped binary
# `tinyedge`, `tinyedge.service` (systemd), `config.toml` (sample for /etc/tinyedge), README.md,
# LICENSE and SHA256SUMS (of the other files, for `sha256sum -c`).
#
# usage: cross/build-release.sh [--targets "t1 t2"] [--out DIR] [--no-smoke]
#
# With Docker running and `cross` on PATH, each target is built by `cross` (Cross.toml at the
# repo root). Otherwise by `cargo build --target` with Debian's cross compilers, installed on
# demand (apt-get; root or sudo). A target that cannot be built is reported on one line and
# skipped; the script goes on with the others and exits non-zero at the end.
# Then cross/smoke-test.sh runs each built binary (under qemu for ARM) unless --no-smoke.
# TINYEDGE_BUILDER=cargo|cross forces one way of building; SOURCE_DATE_EPOCH sets the
# tarballs' timestamps (default: the last commit's time).
set -euo pipefail

# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

usage() {
    grep -m 1 '^# usage:' "${BASH_SOURCE[0]}" | sed 's/^# //'
    log "default targets: ${DEFAULT_TARGETS}"
    log "known targets: ${KNOWN_TARGETS}"
}

TARGETS="${DEFAULT_TARGETS}"
OUT_DIR="${DIST_DIR_DEFAULT}"
SMOKE=1

parse_args() {
    while [[ $# -gt 0 ]]; do
        case "$1" in
            --targets) TARGETS="${2:?--targets needs a list}"; shift 2 ;;
            --targets=*) TARGETS="${1#--targets=}"; shift ;;
            --out) OUT_DIR="${2:?--out needs a directory}"; shift 2 ;;
            --out=*) OUT_DIR="${1#--out=}"; shift ;;
            --no-smoke) SMOKE=0; shift ;;
            -h | --help) usage; exit 0 ;;
            *) log "unknown argument: $1"; usage; exit 2 ;;
        esac
    done
    mkdir -p "${OUT_DIR}"
    OUT_DIR="$(cd "${OUT_DIR}" && pwd)"
}

# "cross" when Docker answers and cross is installed: its images carry each target's C
# compiler and an older glibc, so nothing is installed on this host. "cargo" otherwise.
# TINYEDGE_BUILDER=cargo|cross overrides the choice.
choose_builder() {
    if [[ -n "${TINYEDGE_BUILDER:-}" ]]; then
        echo "${TINYEDGE_BUILDER}"
    elif command -v cross >/dev/null 2>&1 && command -v docker >/dev/null 2>&1 && docker info >/dev/null 2>&1; then
        echo cross
    else
        echo cargo
    fi
}

# Per-target results, for the summary table.
declare -A STATUS=() BINARY_BYTES=() TARBALL_BYTES=() SMOKE_RESULT=() STARTUP_MS=()

skip() {
    local target="$1"
    shift
    STATUS[${target}]="skipped"
    log "SKIP ${target}: $*"
    return 1
}

# Makes `cargo build --target` work for one target without Docker: the rustup target, the
# cross C compiler (for linking and for ring's build script) and its binutils. Sets BUILD_ENV
# to the variables cargo and the cc crate read (passed with `env`, so nothing leaks from one
# target to the next) and PREFIX to the binutils prefix.
prepare_cargo_target() {
    local target="$1" spec cc packages
    spec="$(toolchain_of "${target}")" || { skip "${target}" "no cross toolchain known for it"; return 1; }
    read -r cc PREFIX packages <<<"${spec}"
    if [[ "$(uname -m)" != x86_64 ]]; then
        skip "${target}" "building without Docker expects an x86_64 Debian host (this is $(uname -m)); use cross"
        return 1
    fi
    if ! command -v "${cc}" >/dev/null 2>&1; then
        # Word splitting is wanted: packages is a list.
        # shellcheck disable=SC2086
        apt_install ${packages} || { skip "${target}" "could not install ${packages} (for ${cc})"; return 1; }
        command -v "${cc}" >/dev/null 2>&1 || { skip "${target}" "${cc} still missing after installing ${packages}"; return 1; }
    fi
    if ! rustup target list --installed 2>/dev/null | grep -qx "${target}"; then
        command -v rustup >/dev/null 2>&1 || { skip "${target}" "its rust-std is not installed and there is no rustup to add it"; return 1; }
        log "adding rust target ${target} (rustup)"
        rustup target add "${target}" >&2 || { skip "${target}" "rustup target add ${target} failed"; return 1; }
    fi
    local upper="${target^^}" lower="${target//-/_}"
    upper="${upper//-/_}"
    BUILD_ENV=("CC_${lower}=${cc}")
    if [[ "${PREFIX}" != "-" ]]; then
        BUILD_ENV+=("CARGO_TARGET_${upper}_LINKER=${cc}" "AR_${lower}=${PREFIX}ar")
    fi
    # x86_64 musl keeps rustc's default linker, the host cc: rustc links musl statically with
    # the crt objects and libc.a that rustup ships, and musl-gcc would add a second set.
}

# Builds one target's release binary; sets BINARY to its path.
build_binary() {
    local target="$1" builder="$2"
    if [[ "${builder}" == cross ]]; then
        log "building ${target} with cross"
        (cd "${REPO_ROOT}" && cross build --release --locked --target "${target}" -p tinyedge --bin tinyedge) >&2 ||
            { skip "${target}" "cross build failed (output above)"; return 1; }
    else
        log "building ${target} with cargo (${BUILD_ENV[*]})"
        (cd "${REPO_ROOT}" && env "${BUILD_ENV[@]}" cargo build --release --locked --target "${target}" -p tinyedge --bin tinyedge) >&2 ||
            { skip "${target}" "cargo build failed (output above)"; return 1; }
    fi
    BINARY="${TARGET_DIR}/${target}/release/tinyedge"
    [[ -f "${BINARY}" ]] || { skip "${target}" "the build succeeded but ${BINARY} is missing"; return 1; }
}

# The release profile already strips (strip = true); running the target's strip again
# makes sure of it when the profile changes, and is a no-op otherwise.
strip_binary() {
    local file="$1" prefix="$2" tool
    if [[ "${prefix}" == "-" ]]; then tool="strip"; else tool="${prefix}strip"; fi
    if command -v "${tool}" >/dev/null 2>&1; then
        "${tool}" --strip-all "${file}"
    else
        log "note: ${tool} not found; relying on the release profile's strip = true"
    fi
}

# The LICENSE to ship: the repo root's when there is one, else cross/LICENSE.
license_file() {
    if [[ -f "${REPO_ROOT}/LICENSE" ]]; then echo "${REPO_ROOT}/LICENSE"; else echo "${CROSS_DIR}/LICENSE"; fi
}

# Stages the release directory and packs it. The tarball is reproducible: sorted names,
# owner root, every mtime set to SOURCE_DATE_EPOCH (the last commit's time), gzip without a
# timestamp, so the same commit and toolchain give the same bytes.
package_target() {
    local target="$1" binary="$2" prefix="$3" version="$4" epoch="$5"
    local name="tinyedge-${version}-${target}"
    local stage
    stage="$(mktemp -d)" || return 1
    STAGES+=("${stage}")
    local dir="${stage}/${name}"
    # Explicit modes, so the tarball does not depend on the umask of whoever builds it.
    if ! { mkdir -p "${dir}" && chmod 0755 "${dir}" &&
        install -m 0755 "${binary}" "${dir}/tinyedge" &&
        strip_binary "${dir}/tinyedge" "${prefix}" &&
        install -m 0644 "${CROSS_DIR}/tinyedge.service" "${dir}/tinyedge.service" &&
        install -m 0644 "${CROSS_DIR}/config.toml" "${dir}/config.toml" &&
        install -m 0644 "${REPO_ROOT}/README.md" "${dir}/README.md" &&
        install -m 0644 "$(license_file)" "${dir}/LICENSE"; }; then
        skip "${target}" "staging the tarball's files failed"
        return 1
    fi
    (cd "${dir}" && sha256sum LICENSE README.md config.toml tinyedge tinyedge.service >SHA256SUMS) ||
        { skip "${target}" "sha256sum failed"; return 1; }
    local tarball="${OUT_DIR}/${name}.tar.gz"
    if ! { tar --sort=name --owner=0 --group=0 --numeric-owner --mtime="@${epoch}" -C "${stage}" -cf - "${name}" |
        gzip -9n >"${tarball}.partial" && mv "${tarball}.partial" "${tarball}"; }; then
        skip "${target}" "writing ${tarball} failed"
        return 1
    fi
    BINARY_BYTES[${target}]="$(size_of "${dir}/tinyedge")"
    TARBALL_BYTES[${target}]="$(size_of "${tarball}")"
    log "wrote ${tarball}"
}

# Every step reports its own failure on one line (skip); `set -e` does not apply inside a
# function called from `if`, hence the explicit `|| return 1`.
build_target() {
    local target="$1" builder="$2" version="$3" epoch="$4"
    BUILD_ENV=()
    PREFIX="-"
    BINARY=""
    # A tarball left from an earlier run must not pass for this one if this build fails.
    rm -f -- "${OUT_DIR}/tinyedge-${version}-${target}.tar.gz"
    if [[ "${builder}" == cross ]]; then
        # The binary comes out of the image; strip with the host's binutils when it has them.
        PREFIX="$(toolchain_of "${target}" | awk '{ print $2 }')" || PREFIX="-"
    else
        prepare_cargo_target "${target}" || return 1
    fi
    build_binary "${target}" "${builder}" || return 1
    package_target "${target}" "${BINARY}" "${PREFIX}" "${version}" "${epoch}" || return 1
    STATUS[${target}]="built"
}

write_dist_sums() {
    local tarballs=()
    shopt -s nullglob
    tarballs=("${OUT_DIR}"/tinyedge-*.tar.gz)
    shopt -u nullglob
    [[ ${#tarballs[@]} -gt 0 ]] || return 0
    # Every tarball in the directory, so the file always matches what is there.
    (cd "${OUT_DIR}" && sha256sum -- "${tarballs[@]##*/}" >SHA256SUMS)
    log "wrote ${OUT_DIR}/SHA256SUMS (${#tarballs[@]} tarballs)"
}

run_smoke() {
    local results="$1"
    shift
    [[ $# -gt 0 ]] || return 0
    # Its own exit status is reflected in the per-target results read below.
    "${CROSS_DIR}/smoke-test.sh" --dist "${OUT_DIR}" --results "${results}" "$@" || true
    local target result startup
    while read -r target result startup; do
        SMOKE_RESULT[${target}]="${result}"
        STARTUP_MS[${target}]="${startup}"
    done <"${results}"
    # A target without a result line means the smoke test stopped before it (say, it could
    # not install mosquitto-clients): that is a failure, not a pass.
    for target in "$@"; do
        [[ -n "${SMOKE_RESULT[${target}]:-}" ]] || SMOKE_RESULT[${target}]="FAIL"
    done
}

print_summary() {
    local target binary tarball
    printf '\n%-32s %-22s %-22s %-8s %-6s %s\n' target "binary bytes (MiB)" "tarball bytes (MiB)" build smoke "startup ms"
    for target in ${TARGETS}; do
        binary="-"
        tarball="-"
        [[ -n "${BINARY_BYTES[${target}]:-}" ]] && binary="$(human_size "${BINARY_BYTES[${target}]}")"
        [[ -n "${TARBALL_BYTES[${target}]:-}" ]] && tarball="$(human_size "${TARBALL_BYTES[${target}]}")"
        printf '%-32s %-22s %-22s %-8s %-6s %s\n' "${target}" "${binary}" "${tarball}" \
            "${STATUS[${target}]:-skipped}" "${SMOKE_RESULT[${target}]:--}" "${STARTUP_MS[${target}]:--}"
    done
}

BUILD_ENV=()
PREFIX="-"
BINARY=""
STAGES=()
# shellcheck disable=SC2317  # called by the EXIT trap
cleanup() {
    local stage
    for stage in "${STAGES[@]}"; do rm -rf -- "${stage}"; done
}

main() {
    parse_args "$@"
    trap cleanup EXIT
    local version epoch builder target
    version="$(release_version)" || { log "cannot read the version from cargo metadata or Cargo.toml"; exit 1; }
    epoch="${SOURCE_DATE_EPOCH:-$(git -C "${REPO_ROOT}" log -1 --format=%ct 2>/dev/null || echo 0)}"
    builder="$(choose_builder)"
    [[ "${builder}" == cargo || "${builder}" == cross ]] || { log "TINYEDGE_BUILDER must be cargo or cross, not ${builder}"; exit 2; }
    log "tinyedge ${version}: building ${TARGETS} with ${builder} into ${OUT_DIR}"

    local built=()
    for target in ${TARGETS}; do
        if build_target "${target}" "${builder}" "${version}" "${epoch}"; then
            built+=("${target}")
        fi
    done
    write_dist_sums

    if [[ "${SMOKE}" -eq 1 && ${#built[@]} -gt 0 ]]; then
        local results
        results="$(mktemp)"
        STAGES+=("${results}")
        run_smoke "${results}" "${built[@]}"
    fi
    print_summary

    local failed=0
    for target in ${TARGETS}; do
        [[ "${STATUS[${target}]:-}" == built ]] || failed=1
        [[ "${SMOKE_RESULT[${target}]:-PASS}" == PASS || "${SMOKE_RESULT[${target}]}" == SKIP ]] || failed=1
    done
    exit "${failed}"
}

main "$@"

#!/usr/bin/env bash
# Installs the Debian packages Shoal builds and tests with, only those missing (idempotent).
# Sourced by tools/check and tools/up. Each package is here because something uses it:
#   build-essential cmake pkg-config ccache   the build (ccache: optional speed-up, used when present)
#   libboost-test-dev                          the test suites (Boost.Test)
#   nlohmann-json3-dev libcli11-dev            JSON everywhere; the shoal CLI's argument parsing
#   libspdlog-dev libfmt-dev                   node logs (telemetry/log.hpp); spdlog formats with fmt
#   libpcre2-dev libre2-dev                    tokenizer pre-tokenizer regexes; PII patterns (linear time)
#   libcaf-dev                                 the actors and their remoting
#   capnproto libcapnp-dev                     the RPC schema compiler and runtime, kj-http for HTTP
#   librocksdb-dev libsodium-dev               the audit and answer-cache stores; sealed cache values
#   prometheus-cpp-dev libyaml-cpp-dev         metrics; the cluster YAML
# Node.js and npm (for the OpenAI SDK test) are not installed here: that test skips, saying so,
# where `node` or `npm` is missing.

SHOAL_DEBIAN_PACKAGES=(
  build-essential cmake pkg-config ccache
  libboost-test-dev nlohmann-json3-dev libcli11-dev libspdlog-dev libfmt-dev libpcre2-dev libre2-dev
  libcaf-dev capnproto libcapnp-dev librocksdb-dev libsodium-dev prometheus-cpp-dev libyaml-cpp-dev
)

shoal_install_deps() {
  local missing=()
  local p
  for p in "${SHOAL_DEBIAN_PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
      missing+=("$p")
    fi
  done
  if [ ${#missing[@]} -eq 0 ]; then
    return 0
  fi
  echo "shoal: installing missing packages: ${missing[*]}"
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then sudo="sudo"; else
      echo "shoal: need root (or sudo) to install: ${missing[*]}" >&2
      return 1
    fi
  fi
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq || { echo "shoal: apt-get update failed" >&2; return 1; }
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" || { echo "shoal: apt-get install failed" >&2; return 1; }
}

# Configures and builds into $1 (build directory) with extra CMake arguments after it.
# SHOAL_TARGET limits the build to one target.
shoal_build() {
  local dir="$1"; shift
  local root
  root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
  local launcher=()
  if command -v ccache >/dev/null 2>&1; then
    launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache -DCMAKE_C_COMPILER_LAUNCHER=ccache)
    # Clean clones live at different paths: make ccache hash paths relative to the checkout.
    export CCACHE_BASEDIR="$root"
    export CCACHE_NOHASHDIR=true
    export CCACHE_SLOPPINESS=time_macros,include_file_mtime,include_file_ctime
  fi
  cmake -S "$root" -B "$root/$dir" "${launcher[@]}" "$@" >/dev/null || return 1
  local target=()
  [ -n "${SHOAL_TARGET:-}" ] && target=(--target "$SHOAL_TARGET")
  cmake --build "$root/$dir" -j "${SHOAL_JOBS:-2}" "${target[@]}" || return 1
}

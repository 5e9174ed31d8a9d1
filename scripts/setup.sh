#!/usr/bin/env bash
# Installs what OpenCustody needs on this machine if it is missing.
#
#   scripts/setup.sh          what `make test` and `make demo` need
#   scripts/setup.sh proto    also protoc, for `make proto`
#
# On Debian/Ubuntu it uses apt-get when run as root or with sudo available;
# otherwise it prints the exact commands to run and fails.
set -euo pipefail

want_proto=false
[ "${1:-}" = proto ] && want_proto=true

# Debian package -> a file that proves it is installed.
# A glob matches any version (postgresql installs /usr/lib/postgresql/15/...).
declare -A need=(
  [softhsm2]=/usr/lib/softhsm/libsofthsm2.so
  [opensc]=/usr/bin/pkcs11-tool
  [postgresql]='/usr/lib/postgresql/*/bin/pg_ctl'
  # The emulator web view's browser test drives a headless Chromium.
  [chromium]=/usr/bin/chromium
)
if $want_proto; then need[protobuf-compiler]=/usr/bin/protoc; fi

have() { compgen -G "$1" >/dev/null; }

missing=()
for pkg in "${!need[@]}"; do
  have "${need[$pkg]}" || missing+=("$pkg")
done

if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo="sudo"; else sudo="none"; fi
  fi
  if command -v apt-get >/dev/null 2>&1 && [ "$sudo" != none ]; then
    echo "setup: installing ${missing[*]} with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq
    $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "setup: missing ${missing[*]}. Install them, then run make again:" >&2
    echo "  Debian/Ubuntu: sudo apt-get install -y ${missing[*]}" >&2
    brew=()
    for p in "${missing[@]}"; do
      case $p in softhsm2) brew+=(softhsm);; protobuf-compiler) brew+=(protobuf);; postgresql) brew+=(postgresql@15);; chromium) brew+=(--cask chromium);; *) brew+=("$p");; esac
    done
    echo "  macOS:         brew install ${brew[*]}" >&2
    exit 1
  fi
fi
for pkg in "${!need[@]}"; do
  if ! have "${need[$pkg]}"; then
    echo "setup: $pkg was installed but ${need[$pkg]} is still missing" >&2
    exit 1
  fi
done

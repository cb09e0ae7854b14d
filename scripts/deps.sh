#!/usr/bin/env bash
# Installs the system packages blipd needs, on Debian/Ubuntu:
#   scripts/deps.sh build   what building and running blipd needs
#   scripts/deps.sh test    that, plus what the test suite needs
# Idempotent: installs only what is missing. Uses sudo when not root.
#   build: a C/C++ compiler, cmake (llama.cpp, libjpeg-turbo), clang + libclang
#          (bindgen for llama.cpp's C API), nasm (libjpeg-turbo's SIMD on x86)
#   tests: python3 + venv (the exporter's tests), mosquitto + openssl (MQTT and TLS
#          tests), systemd (systemd-analyze checks the unit file)
set -euo pipefail

packages=(build-essential cmake clang libclang-dev nasm pkg-config)
case "${1:-test}" in
  build) ;;
  test) packages+=(python3 python3-venv python3-pip mosquitto mosquitto-clients openssl systemd) ;;
  *) echo "usage: scripts/deps.sh [build|test]" >&2; exit 2 ;;
esac

missing=()
for p in "${packages[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if ((${#missing[@]})); then
  if ! command -v apt-get >/dev/null; then
    echo "deps.sh: missing system packages: ${missing[*]}" >&2
    echo "deps.sh: this is not a Debian/Ubuntu system; install their equivalents by hand." >&2
    exit 1
  fi
  sudo=""
  if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null; then sudo="sudo"; else
      echo "deps.sh: missing system packages: ${missing[*]}; run as root: apt-get install ${missing[*]}" >&2
      exit 1
    fi
  fi
  echo "deps.sh: installing ${missing[*]}" >&2
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! command -v cargo >/dev/null; then
  echo "deps.sh: Rust is missing: install it with rustup (https://rustup.rs), then rerun." >&2
  echo "         blipd needs rustc >= 1.91 (tract 0.23); Debian's packaged rustc is older." >&2
  exit 1
fi
rustc_minor=$(rustc --version | sed -E 's/^rustc 1\.([0-9]+).*/\1/')
if [ "${rustc_minor:-0}" -lt 91 ]; then
  echo "deps.sh: $(rustc --version) is too old; blipd needs rustc >= 1.91 (rustup update)." >&2
  exit 1
fi

#!/usr/bin/env bash
# Installs the system packages blipd needs, on Debian/Ubuntu:
#   scripts/deps.sh build   what building and running blipd needs
#   scripts/deps.sh test    that, plus what the test suite needs
#   scripts/deps.sh cross   that, plus the aarch64 cross toolchain (cross/build.sh)
# Idempotent: installs only what is missing. Uses sudo when not root.
#   build: a C/C++ compiler, cmake (llama.cpp, libjpeg-turbo), clang + libclang
#          (bindgen for llama.cpp's C API), nasm (libjpeg-turbo's SIMD on x86)
#   tests: python3 + venv (the exporter's tests), mosquitto + openssl (MQTT and TLS
#          tests), systemd (systemd-analyze checks the unit file), lighttpd with
#          its TLS module (the web server the `http` camera tests run against),
#          GStreamer's RTSP server with python3-gi and x264 (tests/rtsp/server.py,
#          the RTSP server the `rtsp` camera tests run against)
#   cross: gcc/g++ for aarch64 (linker, llama.cpp, libjpeg-turbo), qemu-user
#          (runs the aarch64 binary here), and, unless rustup has the aarch64
#          target, Debian's rustc-web with its arm64 standard library
set -euo pipefail

packages=(build-essential cmake clang libclang-dev nasm pkg-config)
case "${1:-test}" in
  build) ;;
  test) packages+=(python3 python3-venv python3-pip mosquitto mosquitto-clients openssl systemd lighttpd lighttpd-mod-openssl
                 gir1.2-gst-rtsp-server-1.0 python3-gi gstreamer1.0-plugins-ugly) ;;
  cross)
    packages+=(gcc-aarch64-linux-gnu g++-aarch64-linux-gnu binutils-aarch64-linux-gnu qemu-user file dpkg-dev lintian)
    if ! (command -v rustup >/dev/null && rustup target list --installed 2>/dev/null | grep -qx aarch64-unknown-linux-gnu); then
      packages+=(rustc-web cargo-web libstd-rust-web-dev:arm64)
      if ! dpkg --print-foreign-architectures | grep -qx arm64; then
        if [ "$(id -u)" != 0 ]; then
          echo "deps.sh: run as root once: dpkg --add-architecture arm64 && apt-get update" >&2
          exit 1
        fi
        dpkg --add-architecture arm64
        need_update=1
      fi
    fi
    ;;
  *) echo "usage: scripts/deps.sh [build|test|cross]" >&2; exit 2 ;;
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
  : "${need_update:=0}"
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

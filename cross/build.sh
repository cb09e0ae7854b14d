#!/usr/bin/env bash
# Cross-compiles blipd for aarch64 Linux (Jetson Orin, Raspberry Pi 4/5) on an
# x86-64 Debian/Ubuntu machine, llama.cpp and libjpeg-turbo included, without
# Docker. See cross/README.md.
#
#   cross/build.sh [--cpu generic|pi4|pi5|orin] [--deb] [--install-deps]
#
# Output: target/aarch64-<cpu>/aarch64-unknown-linux-gnu/release/blipd
# (stripped copy: dist/blipd-aarch64-<cpu>), and with --deb the arm64 .deb.
set -euo pipefail
cd "$(dirname "$0")/.."

cpu=generic deb=0 install=0
while [ $# -gt 0 ]; do
  case "$1" in
    --cpu) cpu="$2"; shift 2 ;;
    --deb) deb=1; shift ;;
    --install-deps) install=1; shift ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done

# ggml -march per board (see cross/README.md for how to choose).
case "$cpu" in
  generic) arch="" ;;                              # armv8-a: runs on every aarch64 board
  pi4)     arch="armv8-a+crc" ;;                   # Cortex-A72
  pi5)     arch="armv8.2-a+dotprod+fp16+crc" ;;    # Cortex-A76
  orin)    arch="armv8.2-a+dotprod+fp16+crc" ;;    # Cortex-A78AE (Jetson Orin)
  *) echo "--cpu must be generic, pi4, pi5 or orin" >&2; exit 2 ;;
esac

target=aarch64-unknown-linux-gnu
if [ "$install" = 1 ]; then scripts/deps.sh cross; fi

# Toolchain: rustup's, if it has the aarch64 standard library; else Debian's
# rustc-web with libstd-rust-web-dev:arm64 (scripts/deps.sh cross).
if command -v rustup >/dev/null && rustup target list --installed 2>/dev/null | grep -qx "$target"; then
  cargo=cargo; export RUSTC="${RUSTC:-rustc}"
elif [ -x /usr/bin/cargo ] && [ -d /usr/lib/rustlib/$target ]; then
  cargo=/usr/bin/cargo; export RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc
else
  cat >&2 <<MSG
No Rust standard library for $target. Either
  rustup target add $target
or (Debian/Ubuntu, no download from rustup needed)
  cross/build.sh --install-deps     # apt: rustc-web cargo-web libstd-rust-web-dev:arm64 ...
MSG
  exit 1
fi
for tool in aarch64-linux-gnu-gcc aarch64-linux-gnu-g++ cmake clang; do
  command -v "$tool" >/dev/null || { echo "missing $tool: run cross/build.sh --install-deps" >&2; exit 1; }
done
[ -f /usr/include/aarch64-linux-gnu/asm/types.h ] || [ -d /usr/aarch64-linux-gnu/include/linux ] || {
  echo "missing arm64 kernel headers (linux-libc-dev:arm64): run cross/build.sh --install-deps" >&2; exit 1; }

export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
export CC_aarch64_unknown_linux_gnu=aarch64-linux-gnu-gcc
export CXX_aarch64_unknown_linux_gnu=aarch64-linux-gnu-g++
export AR_aarch64_unknown_linux_gnu=aarch64-linux-gnu-ar
export CMAKE_TOOLCHAIN_FILE_aarch64_unknown_linux_gnu="$PWD/cross/aarch64-linux-gnu.cmake"
export BINDGEN_EXTRA_CLANG_ARGS_aarch64_unknown_linux_gnu="--sysroot=/usr/aarch64-linux-gnu -I/usr/include/aarch64-linux-gnu"
export PKG_CONFIG_ALLOW_CROSS=1
export BLIPD_ARM_ARCH="$arch"
# Each CPU profile in its own target dir: the C code is compiled per profile.
export CARGO_TARGET_DIR="$PWD/target/aarch64-$cpu"
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER="$PWD/cross/qemu"

start=$(date +%s)
"$cargo" build --release --locked --target "$target" --bin blipd
bin="$CARGO_TARGET_DIR/$target/release/blipd"
mkdir -p dist
aarch64-linux-gnu-strip -o "dist/blipd-aarch64-$cpu" "$bin"
echo "built $bin in $(( $(date +%s) - start )) s; stripped: dist/blipd-aarch64-$cpu ($(du -h "dist/blipd-aarch64-$cpu" | cut -f1))"
file "dist/blipd-aarch64-$cpu" 2>/dev/null || true

if [ "$deb" = 1 ]; then
  command -v cargo-deb >/dev/null || cargo install --locked cargo-deb
  cargo deb --no-build --target "$target" --output dist/ \
    --deb-version "$(grep -m1 '^version' Cargo.toml | cut -d'"' -f2)-1"
fi

#!/usr/bin/env bash
# The aarch64 proof, as CI runs it: cross-build blipd (generic CPU profile),
# run every golden case under qemu-aarch64 and require token-identical
# answers (two threads per case, cross/qemu), then build the arm64
# .deb and check its contents (and lintian), and that its `blipd quantize
# --vision int8|f16` writes x86's graphs.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh cross
start=$(date +%s)
cpu="${BLIPD_CROSS_CPU:-generic}"
cross/build.sh --cpu "$cpu" --deb
echo "cross build: $(( $(date +%s) - start )) s"

python3 cross/check_goldens.py "dist/blipd-aarch64-$cpu"

deb=$(ls -t dist/blipd_*_arm64.deb | head -1)
echo "== $deb"
dpkg-deb --info "$deb" | sed -n '/Package:/,$p'
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
dpkg-deb -x "$deb" "$root"
for f in usr/bin/blipd etc/blipd/blipd.toml usr/share/blipd/demo/bundle.json \
         usr/share/doc/blipd/README.md; do
  [ -e "$root/$f" ] || { echo "missing in $deb: /$f" >&2; exit 1; }
done
unit=$(find "$root" -name blipd.service | head -1)
[ -n "$unit" ] || { echo "missing in $deb: blipd.service" >&2; exit 1; }
file "$root/usr/bin/blipd" | grep -q "ARM aarch64" || { echo "/usr/bin/blipd is not an aarch64 binary" >&2; exit 1; }
# The packaged binary, config and demo bundle work together (under qemu).
cross/qemu "$root/usr/bin/blipd" check-config "$root/etc/blipd/blipd.toml" >/dev/null
cross/qemu "$root/usr/bin/blipd" ask --threads 2 --model "$root/usr/share/blipd/demo" \
  --image tests/fixtures/images/garage.png "What do you see?" >/dev/null
# `blipd quantize --vision int8 --qformer int8` on the board: the packaged
# binary rewrites the installed demo bundle's graphs into the same files,
# byte for byte, as the x86 build (whose tensors and nodes equal
# onnxruntime's: models/tests/test_quantize_graph.py).
[ -x target/release/blipd ] || cargo build --release
cross/qemu "$root/usr/bin/blipd" quantize --threads 2 \
  "$root/usr/share/blipd/demo" "$root/int8-arm" --vision int8 --qformer int8 2>&1 | tail -1
target/release/blipd quantize --threads 1 "$root/usr/share/blipd/demo" "$root/int8-x86" \
  --vision int8 --qformer int8 2>/dev/null
for f in vision.onnx vision.onnx.data qformer.onnx qformer.onnx.data; do
  cmp "$root/int8-arm/$f" "$root/int8-x86/$f"
done
# The same for `--vision f16` (the f32 -> f16 rounding is half's, in software
# or the CPU's own conversion instructions: the bytes must not differ), whose
# agreement check also runs tract's aarch64 f16 kernels.
cross/qemu "$root/usr/bin/blipd" quantize --threads 2 \
  "$root/usr/share/blipd/demo" "$root/f16-arm" --vision f16 2>&1 | tail -1
target/release/blipd quantize --threads 1 "$root/usr/share/blipd/demo" "$root/f16-x86" --vision f16 2>/dev/null
for f in vision.onnx vision.onnx.data; do
  cmp "$root/f16-arm/$f" "$root/f16-x86/$f"
done
echo "package contents ok (aarch64 int8 and f16 graphs = x86's)"
echo "== lintian (warnings reported, not fatal)"
lintian --tag-display-limit 0 "$deb" || true

#!/usr/bin/env bash
# Builds omnisync-ffi (unstripped, with the `uniffi-bindgen` binary) and
# generates the Kotlin, Swift and Python bindings from the built library:
#
#   bindings/generate.sh
#
# Output (all build output, ignored by git):
#   bindings/generated/kotlin/dev/omnisync/omnisync_ffi.kt
#   bindings/generated/python/omnisync_ffi.py (+ the library, which it loads from its own directory)
#   bindings/generated/swift/{OmnisyncFFI.swift,OmnisyncFFIFFI.h,OmnisyncFFIFFI.modulemap}
#   bindings/swift/Sources/OmnisyncFFI/OmnisyncFFI.swift and bindings/swift/Headers/ (the Swift package)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
OUT="$ROOT/bindings/generated"

case "$(uname -s)" in
  Darwin) LIB="$TARGET_DIR/debug/libomnisync_ffi.dylib" ;;
  *) LIB="$TARGET_DIR/debug/libomnisync_ffi.so" ;;
esac

# One feature set for the library and the generator, so cargo builds uniffi once.
cargo build --quiet --manifest-path "$ROOT/Cargo.toml" -p omnisync-ffi --features cli

rm -rf "$OUT"
for language in kotlin swift python; do
  "$TARGET_DIR/debug/uniffi-bindgen" generate --no-format \
    --library "$LIB" --language "$language" --out-dir "$OUT/$language"
done
cp "$LIB" "$OUT/python/"

# The Swift package: generated sources in place, headers for the XCFramework.
SWIFT="$ROOT/bindings/swift"
mkdir -p "$SWIFT/Sources/OmnisyncFFI" "$SWIFT/Headers"
cp "$OUT/swift/OmnisyncFFI.swift" "$SWIFT/Sources/OmnisyncFFI/OmnisyncFFI.swift"
cp "$OUT/swift/OmnisyncFFIFFI.h" "$SWIFT/Headers/OmnisyncFFIFFI.h"
cp "$OUT/swift/OmnisyncFFIFFI.modulemap" "$SWIFT/Headers/module.modulemap"

echo "bindings generated in $OUT and $SWIFT"

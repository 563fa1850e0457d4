#!/usr/bin/env bash
# Builds omnisync-ffi (unstripped, with the `uniffi-bindgen` binary) and
# generates the Kotlin, Swift and Python bindings from the built library:
#
#   bindings/generate.sh
#
# Output (all build output, ignored by git):
#   bindings/generated/kotlin/dev/omnisync/omnisync_ffi.kt and dev/omnisync/core/omnisync_core.kt
#   bindings/generated/python/omnisync_ffi.py and omnisync_core.py (+ the library, which they load from their own directory)
#   bindings/generated/swift/{OmnisyncFFI,OmnisyncCore}.swift, {OmnisyncFFIFFI,OmnisyncCoreFFI}.{h,modulemap}
#   bindings/swift/Sources/OmnisyncFFI/{OmnisyncFFI,OmnisyncCore}.swift and bindings/swift/Headers/ (the Swift package)
#
# Two UniFFI components, so two modules per language: omnisync-ffi's (the
# store, its events and inputs) and omnisync-core's value types (feature
# `ffi`: money, products, prices, stock views, orders, ...).
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

# The Swift package: generated sources in place, headers for the XCFramework
# (one module map declaring both C modules). UniFFI's Swift output expects
# the files of all components in one Swift module: both go to OmnisyncFFI.
SWIFT="$ROOT/bindings/swift"
rm -rf "$SWIFT/Headers"
mkdir -p "$SWIFT/Sources/OmnisyncFFI" "$SWIFT/Headers"
: >"$SWIFT/Headers/module.modulemap"
for module in OmnisyncFFI OmnisyncCore; do
  cp "$OUT/swift/$module.swift" "$SWIFT/Sources/OmnisyncFFI/$module.swift"
  cp "$OUT/swift/${module}FFI.h" "$SWIFT/Headers/${module}FFI.h"
  cat "$OUT/swift/${module}FFI.modulemap" >>"$SWIFT/Headers/module.modulemap"
  echo >>"$SWIFT/Headers/module.modulemap"
done

echo "bindings generated in $OUT and $SWIFT"

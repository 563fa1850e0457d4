#!/usr/bin/env bash
# Builds OmnisyncFFIFFI.xcframework for the Swift package (macOS with Xcode
# only; there is no Swift toolchain on Linux CI, which only checks that the
# Swift sources are generated):
#
#   rustup target add aarch64-apple-ios aarch64-apple-ios-sim x86_64-apple-ios aarch64-apple-darwin x86_64-apple-darwin
#   bindings/swift/build-xcframework.sh            # release build
#
# Then add bindings/swift as a local Swift package in Xcode (or depend on it by path).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
SWIFT="$ROOT/bindings/swift"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
PROFILE="${PROFILE:-release}"

if [[ "$(uname -s)" != "Darwin" ]]; then
  echo "build-xcframework.sh needs macOS with Xcode" >&2
  exit 1
fi

# The Swift sources and header come from the (unstripped) host library.
"$ROOT/bindings/generate.sh"

targets=(aarch64-apple-ios aarch64-apple-ios-sim x86_64-apple-ios aarch64-apple-darwin x86_64-apple-darwin)
for target in "${targets[@]}"; do
  cargo build --manifest-path "$ROOT/Cargo.toml" -p omnisync-ffi --lib --profile "$PROFILE" --target "$target"
done

lib() { echo "$TARGET_DIR/$1/$PROFILE/libomnisync_ffi.a"; }
FAT="$TARGET_DIR/xcframework"
rm -rf "$FAT" "$SWIFT/OmnisyncFFIFFI.xcframework"
mkdir -p "$FAT/ios-sim" "$FAT/macos"
lipo -create "$(lib aarch64-apple-ios-sim)" "$(lib x86_64-apple-ios)" -output "$FAT/ios-sim/libomnisync_ffi.a"
lipo -create "$(lib aarch64-apple-darwin)" "$(lib x86_64-apple-darwin)" -output "$FAT/macos/libomnisync_ffi.a"

xcodebuild -create-xcframework \
  -library "$(lib aarch64-apple-ios)" -headers "$SWIFT/Headers" \
  -library "$FAT/ios-sim/libomnisync_ffi.a" -headers "$SWIFT/Headers" \
  -library "$FAT/macos/libomnisync_ffi.a" -headers "$SWIFT/Headers" \
  -output "$SWIFT/OmnisyncFFIFFI.xcframework"

echo "built $SWIFT/OmnisyncFFIFFI.xcframework"

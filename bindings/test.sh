#!/usr/bin/env bash
# The bindings' test command: builds the library and the hub, generates the
# Kotlin, Swift and Python bindings, runs the Rust unit tests, the Kotlin
# (Maven/JUnit) and Python (pytest) suites against a real omnisync-hub, and
# checks that the Swift sources were generated. Exits non-zero on any failure.
#
#   bindings/test.sh
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
GENERATED="$ROOT/bindings/generated"

step() { printf '\n== %s\n' "$*"; }

step "build omnisync-hub"
cargo build --quiet --manifest-path "$ROOT/Cargo.toml" -p omnisync-hub

step "build omnisync-ffi and generate bindings"
"$ROOT/bindings/generate.sh"

step "Rust unit tests of omnisync-ffi"
cargo test --manifest-path "$ROOT/Cargo.toml" -p omnisync-ffi --features cli --quiet

step "Swift sources generated"
for file in "$GENERATED/swift/OmnisyncFFI.swift" "$GENERATED/swift/OmnisyncFFIFFI.h" \
  "$GENERATED/swift/OmnisyncFFIFFI.modulemap" "$ROOT/bindings/swift/Sources/OmnisyncFFI/OmnisyncFFI.swift" \
  "$GENERATED/swift/OmnisyncCore.swift" "$GENERATED/swift/OmnisyncCoreFFI.h" \
  "$GENERATED/swift/OmnisyncCoreFFI.modulemap" "$ROOT/bindings/swift/Sources/OmnisyncFFI/OmnisyncCore.swift"; do
  if [[ ! -s "$file" ]]; then
    echo "missing Swift output: $file" >&2
    exit 1
  fi
done
grep -q "func openStore(" "$GENERATED/swift/OmnisyncFFI.swift" || {
  echo "the Swift bindings lack openStore" >&2
  exit 1
}
echo "ok: Swift sources in $GENERATED/swift and bindings/swift/Sources"

step "Kotlin tests (Maven, JUnit 5) against a real hub"
(
  cd "$ROOT/bindings/kotlin"
  # -q hides the summary; surefire's own lines are kept by grepping its report.
  mvn -q -B test \
    -Domnisync.library.dir="$TARGET_DIR/debug" \
    -Domnisync.hub.binary="$TARGET_DIR/debug/omnisync-hub" \
    -Domnisync.generated.dir="$GENERATED/kotlin"
)
cat "$ROOT"/bindings/kotlin/target/surefire-reports/*.txt

step "Python tests (pytest) against a real hub"
if ! python3 -c "import pytest" 2>/dev/null; then
  python3 -m pip install --quiet pytest
fi
OMNISYNC_PY_BINDINGS="$GENERATED/python" \
  OMNISYNC_HUB_BINARY="$TARGET_DIR/debug/omnisync-hub" \
  python3 -m pytest -q -p no:cacheprovider "$ROOT/bindings/python/tests"

echo
echo "bindings: all tests passed"

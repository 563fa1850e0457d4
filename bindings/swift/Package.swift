// swift-tools-version:5.9
// The Swift package of omnisync's bindings. `bindings/generate.sh` writes the
// generated sources into Sources/OmnisyncFFI (OmnisyncFFI.swift, the store,
// and OmnisyncCore.swift, the core's value types) and the C headers + one
// module map into Headers/; `bindings/swift/build-xcframework.sh` (macOS) builds
// OmnisyncFFIFFI.xcframework from the Rust static libraries.
import PackageDescription

let package = Package(
    name: "OmnisyncFFI",
    platforms: [.iOS(.v15), .macOS(.v12)],
    products: [
        .library(name: "OmnisyncFFI", targets: ["OmnisyncFFI"]),
    ],
    targets: [
        // The Rust library (static, per platform) with its C header and module map.
        .binaryTarget(name: "OmnisyncFFIFFI", path: "OmnisyncFFIFFI.xcframework"),
        // The generated Swift API over it.
        .target(
            name: "OmnisyncFFI",
            dependencies: ["OmnisyncFFIFFI"],
            path: "Sources/OmnisyncFFI"
        ),
    ]
)

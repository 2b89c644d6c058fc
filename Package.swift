// swift-tools-version: 6.1
import PackageDescription

let upcoming: [SwiftSetting] = [
    .enableUpcomingFeature("ExistentialAny"),
    .enableUpcomingFeature("MemberImportVisibility"),
    .enableUpcomingFeature("InternalImportsByDefault"),
]

let package = Package(
    name: "baton",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "baton", targets: ["baton"])
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-system.git", from: "1.8.1"),
        // Metrics are recorded through swift-metrics' CoreMetrics API and rendered by swift-prometheus (neither pulls
        // in Foundation).
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
    ],
    targets: [
        // libsystemd, found through pkg-config: sd_listen_fds_with_names, sd_notify, sd_journal_sendv.
        .systemLibrary(
            name: "CSystemd",
            pkgConfig: "libsystemd",
            providers: [.apt(["libsystemd-dev"])]
        ),
        // The few lines of C that cannot be Swift: the child side of a spawn and the CMSG macros.
        .target(name: "CBatonSystem"),
        // The system layer: syscalls, fds, sockets, spawn, signals, the event loop, libsystemd.
        .target(
            name: "BatonSystem",
            dependencies: [
                "CBatonSystem",
                "CSystemd",
                .product(name: "SystemPackage", package: "swift-system"),
            ],
            swiftSettings: upcoming
        ),
        // Plain Swift: configuration, parsers, the supervisor's state machine, the control protocol.
        .target(name: "BatonCore", swiftSettings: upcoming),
        // The daemon: one actor that performs the state machine's actions with the system layer.
        .target(
            name: "BatonDaemon",
            dependencies: [
                "BatonCore",
                "BatonSystem",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "CoreMetrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ],
            swiftSettings: upcoming
        ),
        // The command line: options and the parser that checks them into a configuration (plain Swift).
        .target(
            name: "BatonCommandLine",
            dependencies: [
                "BatonCore",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: upcoming
        ),
        .executableTarget(
            name: "baton",
            dependencies: [
                "BatonCommandLine",
                "BatonCore",
                "BatonDaemon",
                "BatonSystem",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: upcoming
        ),
        .testTarget(
            name: "BatonCoreTests",
            dependencies: [
                "BatonCore", "BatonCommandLine", .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: upcoming
        ),
        .testTarget(
            name: "BatonSystemTests",
            dependencies: ["BatonCore", "BatonSystem", "BatonDaemon"],
            swiftSettings: upcoming
        ),
    ],
    swiftLanguageModes: [.v6]
)

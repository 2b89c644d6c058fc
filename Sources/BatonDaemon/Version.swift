import BatonSystem

/// baton's version, shown by `baton --version` and `baton status`. It is the record in
/// Sources/CBatonSystem/version.c, which keeps it equal to the version in packaging/debian/changelog.
public enum BatonVersion {
    public static let current = BuildVersion.current
}

import CBatonSystem

/// The version this binary was built as, read from its `.baton_version` record (Sources/CBatonSystem/version.c).
public enum BuildVersion {
    public static let current = String(cString: cbaton_version())
}

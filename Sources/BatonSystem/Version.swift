internal import CBatonSystem

/// baton's version, shown by `baton --version` and `baton status`: the record in Sources/CBatonSystem/version.c,
/// which a built binary carries in its `.baton_version` section (tools/set-version.py rewrites it in one).
public enum BatonVersion {
    public static let current = String(cString: cbaton_version())
}

/// baton's version, shown by `baton --version` and `baton status`. Keep it equal to the version in
/// packaging/debian/changelog.
public enum BatonVersion {
    public static let current = "0.1.0"
}

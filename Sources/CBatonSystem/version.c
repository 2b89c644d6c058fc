// baton's version, kept as a fixed-size record in a section of its own so that it can be read off a built
// binary, and changed in one (Tests/system/upgrade-tests.sh makes "the next baton" that way, without a
// second build): "baton-version:" and the version, padded with NULs to CBATON_VERSION_RECORD bytes.
// Keep the version equal to the one in packaging/debian/changelog (VersionTests checks it).
#include "CBatonSystem.h"

__attribute__((used, section(".baton_version"))) const char cbaton_version_record[CBATON_VERSION_RECORD] =
    "baton-version:0.1.0";

const char *cbaton_version(void) { return cbaton_version_record + sizeof "baton-version:" - 1; }

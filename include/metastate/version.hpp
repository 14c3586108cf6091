// metastate version: the single source of the version number (CMake reads it too).
#pragma once

#define METASTATE_VERSION_MAJOR 0
#define METASTATE_VERSION_MINOR 1
#define METASTATE_VERSION_PATCH 0

namespace metastate {
/// The library version as "major.minor.patch".
inline constexpr const char* version_string = "0.1.0";
}  // namespace metastate

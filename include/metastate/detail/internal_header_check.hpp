// Refuses direct inclusion of metastate's private headers (Eigen's InternalHeaderCheck).
#pragma once
#if !defined(METASTATE_INTERNAL_INCLUDE_ALLOWED)
#error "This is a private metastate header: include <metastate/metastate.hpp> or a public header instead."
#endif

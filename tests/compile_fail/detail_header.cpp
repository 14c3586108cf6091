// Must not compile: a private header included directly.
#include <metastate/wkv/detail/driver.hpp>

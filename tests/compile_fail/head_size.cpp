// Must not compile: a head size of zero.
#include <metastate/core/head_size.hpp>
metastate::head_size<0> bad;

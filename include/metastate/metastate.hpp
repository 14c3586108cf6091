// metastate: the umbrella header (every public header of the library).
#pragma once

#include "metastate/version.hpp"
#include "metastate/core/aligned.hpp"
#include "metastate/core/backend.hpp"
#include "metastate/core/config.hpp"
#include "metastate/core/error.hpp"
#include "metastate/core/head_size.hpp"
#include "metastate/core/parallel.hpp"
#include "metastate/core/scalar_traits.hpp"
#include "metastate/core/views.hpp"
#include "metastate/io/safetensors.hpp"
#include "metastate/meta_state/meta_state.hpp"
#include "metastate/model/rwkv7.hpp"
#include "metastate/model/state.hpp"
#include "metastate/model/weights.hpp"
#include "metastate/scaling/grow.hpp"
#include "metastate/wkv/wkv7.hpp"

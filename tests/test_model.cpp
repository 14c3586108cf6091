// RWKV-7 model: against the fp64 reference, modes that must agree, batches, state files, loading errors.
#include <doctest/doctest.h>

#include <algorithm>
#include <cstdint>

#include <metastate/model/rwkv7.hpp>

#include "model_fixture.hpp"
#include "reference.hpp"
#include "reference_model.hpp"

namespace ms = metastate;
namespace mm = metastate::model;
using fixture::random_tokens;
using fixture::run;
using fixture::flatten;

TEST_CASE("rwkv7 model matches the fp64 reference (SPEC §7: 1e-5)") {
  struct shape {
    int layers, width, heads, head_size, vocab, group;
  };
  // Head sizes 16 and 64, a group size smaller than the head, an attention width != width.
  for (const auto s : {shape{3, 64, 4, 16, 97, 0}, shape{2, 128, 2, 64, 211, 0}, shape{2, 64, 4, 16, 50, 8},
                       shape{2, 64, 6, 16, 61, 48}}) {
    CAPTURE(s.head_size);
    CAPTURE(s.group);
    CAPTURE(s.heads);
    fixture::temp_dir dir("model");
    auto w = mm::initialise(fixture::small_config(s.layers, s.width, s.heads, s.head_size, s.vocab, s.group), 5,
                            mm::init_kind::random);
    mm::save(w, dir / "m.safetensors");
    const auto file = ms::io::safetensors_file::open(dir / "m.safetensors");
    const auto loaded = mm::load(file);
    const ref_model::rwkv7 reference(file);
    const auto tokens = random_tokens(37, s.vocab, 6);
    auto ref_state = reference.zero_state();
    const auto expected = reference.forward(tokens, ref_state);
    mm::rwkv7_state state(loaded.config, 1);
    CHECK(ref::rms_relative(run(loaded, tokens, state, 16), expected) <= 1e-5);
    CHECK(ref::rms_relative(flatten(state.att_kv), flatten(ref_state.att_kv)) <= 1e-5);
  }
}

TEST_CASE("rwkv7 sequence, step and prefill-then-continue agree") {
  const auto w = mm::initialise(fixture::small_config(2, 64, 4, 16, 80), 7, mm::init_kind::random);
  const auto tokens = random_tokens(29, 80, 8);
  mm::rwkv7_state whole_state(w.config, 1);
  const auto whole = run(w, tokens, whole_state, 128);
  for (int chunk : {1, 4, 7}) {
    CAPTURE(chunk);
    mm::rwkv7_state s(w.config, 1);
    CHECK(ref::rms_relative(run(w, tokens, s, chunk), whole) <= 1e-6);
    CHECK(ref::rms_relative(flatten(s.att_kv), flatten(whole_state.att_kv)) <= 1e-6);
  }
  // Prefill 20 tokens, then continue token by token from the returned state.
  mm::rwkv7_state s(w.config, 1);
  auto logits = run(w, {tokens.begin(), tokens.begin() + 20}, s, 8);
  for (std::size_t t = 20; t < tokens.size(); ++t) {
    const auto one = run(w, {tokens[t]}, s, 1);
    logits.insert(logits.end(), one.begin(), one.end());
  }
  CHECK(ref::rms_relative(logits, whole) <= 1e-6);
}

TEST_CASE("rwkv7 batch rows equal separate runs") {
  const auto w = mm::initialise(fixture::small_config(2, 64, 4, 16, 80), 9, mm::init_kind::random);
  const int B = 3, T = 11;
  const auto tokens = random_tokens(B * T, 80, 10);
  mm::rwkv7_state batch(w.config, B);
  const auto together = run(w, tokens, batch, 4);
  for (int b = 0; b < B; ++b) {
    mm::rwkv7_state single(w.config, 1);
    const auto alone = run(w, {tokens.begin() + b * T, tokens.begin() + (b + 1) * T}, single, 4);
    const std::vector<float> row(together.begin() + b * T * 80, together.begin() + (b + 1) * T * 80);
    CHECK(ref::rms_relative(row, alone) <= 1e-6);
  }
}

TEST_CASE("rwkv7 state keeps its WKV and Meta-State states cache-line aligned, also when copied") {
  // The simd step kernel updates these in place; at malloc's 16-byte alignment every vector
  // access straddles two cache lines (docs/PERFORMANCE.md, session 4).
  const auto c = fixture::small_config(3, 64, 4, 16, 80, 0, "FMF");
  const mm::rwkv7_state s(c, 3);
  const mm::rwkv7_state fork = s;
  auto aligned = [](const float* p) { return reinterpret_cast<std::uintptr_t>(p) % 64 == 0; };
  for (const auto* state : {&s, &fork})
    for (int l = 0; l < c.layers; ++l) {
      CAPTURE(l);
      CHECK(aligned(state->att_kv[l].data()));
      if (c.is_meta_state(l)) CHECK(aligned(state->ms[l].data()));
    }
}

TEST_CASE("rwkv7 state save and restore round-trips bit-exactly and refuses another shape") {
  const auto w = mm::initialise(fixture::small_config(2, 64, 4, 16, 80), 11, mm::init_kind::random);
  fixture::temp_dir dir("state");
  mm::rwkv7_state s(w.config, 2);
  run(w, random_tokens(2 * 9, 80, 12), s, 4);
  mm::save_state(s, dir / "s.safetensors");
  mm::rwkv7_state restored(w.config, 2);
  mm::restore_state(restored, ms::io::safetensors_file::open(dir / "s.safetensors"));
  for (int l = 0; l < w.config.layers; ++l) {
    CHECK(restored.att_x_prev[l] == s.att_x_prev[l]);
    CHECK(restored.att_kv[l] == s.att_kv[l]);
    CHECK(restored.ffn_x_prev[l] == s.ffn_x_prev[l]);
  }
  // Continuing from the restored state equals continuing from the original.
  const auto more = random_tokens(2 * 3, 80, 13);
  CHECK(run(w, more, restored, 2) == run(w, more, s, 2));

  mm::rwkv7_state other_batch(w.config, 1);
  CHECK_THROWS_WITH_AS(mm::restore_state(other_batch, ms::io::safetensors_file::open(dir / "s.safetensors")),
                       doctest::Contains("the state is for a model with layers 2, width 64, heads 4, head size 16, batch 2"),
                       ms::shape_error);
  mm::rwkv7_state other_model(fixture::small_config(2, 64, 2, 32, 80), 2);
  CHECK_THROWS_AS(mm::restore_state(other_model, ms::io::safetensors_file::open(dir / "s.safetensors")),
                  ms::shape_error);
  // A file that fails part-way (its last layer's WKV state mis-shaped) leaves the state as it was.
  {
    const auto file = ms::io::safetensors_file::open(dir / "s.safetensors");
    ms::io::safetensors_writer broken;
    for (const auto& name : file.names()) {
      const auto values = file.read<float>(name);
      const auto shape = name == "state.1.att_kv" ? std::vector<std::int64_t>{2, 4, 256} : file.at(name).shape;
      broken.add<float>(name, shape, values.data());
    }
    broken.set_metadata("state_shape", file.metadata().at("state_shape"));
    broken.write(dir / "broken.safetensors");
    mm::rwkv7_state untouched(w.config, 2);
    CHECK_THROWS_WITH_AS(mm::restore_state(untouched, ms::io::safetensors_file::open(dir / "broken.safetensors")),
                         doctest::Contains("'state.1.att_kv'"), ms::shape_error);
    for (int l = 0; l < w.config.layers; ++l) {
      CHECK(untouched.att_x_prev[l].isZero(0));
      CHECK(std::all_of(untouched.att_kv[l].begin(), untouched.att_kv[l].end(), [](float x) { return x == 0; }));
    }
  }
  mm::rwkv7_state wrong(fixture::small_config(2, 64, 2, 32, 80), 1);
  std::vector<float> logits(80);
  CHECK_THROWS_AS(mm::forward(w, more.data(), 1, wrong, logits.data()), ms::shape_error);
}

TEST_CASE("rwkv7 forward rejects tokens outside the vocabulary") {
  const auto w = mm::initialise(fixture::small_config(1, 32, 2, 16, 40), 14, mm::init_kind::random);
  mm::rwkv7_state s(w.config, 1);
  const std::vector<std::int64_t> tokens{3, 40};
  std::vector<float> logits(2 * 40);
  CHECK_THROWS_WITH_AS(mm::forward(w, tokens.data(), 2, s, logits.data()),
                       "rwkv7 forward: token 40 at position 1 is outside the vocabulary [0, 40)", ms::value_error);
}

TEST_CASE("rwkv7 forward rejects null buffers and token counts it cannot run") {
  const auto w = mm::initialise(fixture::small_config(1, 32, 2, 16, 40), 14, mm::init_kind::random);
  mm::rwkv7_state s(w.config, 1);
  const std::vector<std::int64_t> tokens{3, 7};
  std::vector<float> logits(2 * 40);
  CHECK_THROWS_WITH_AS(mm::forward(w, tokens.data(), 2, s, nullptr),
                       doctest::Contains("'logits' is null, but opt.logits asks for logits"), ms::value_error);
  CHECK_THROWS_WITH_AS(mm::forward(w, nullptr, 2, s, logits.data()), "rwkv7 forward: 'tokens' is null",
                       ms::value_error);
  CHECK_THROWS_WITH_AS(mm::forward(w, tokens.data(), -3, s, logits.data()),
                       "rwkv7 forward: the token count must be >= 0, got -3", ms::value_error);
  mm::forward_options last;
  last.logits = mm::logits_for::last_token;
  CHECK_THROWS_WITH_AS(mm::forward(w, tokens.data(), 0, s, logits.data(), last),
                       "rwkv7 forward: logits_for::last_token needs at least one token", ms::value_error);
  mm::forward_options none;
  none.logits = mm::logits_for::none;
  CHECK_NOTHROW(mm::forward(w, tokens.data(), 2, s, nullptr, none));  // only the state
  none.exec.threads = -1;
  CHECK_THROWS_WITH_AS(mm::forward(w, tokens.data(), 2, s, nullptr, none),
                       "exec.threads must be >= 0 (0: OpenMP's default), got -1", ms::value_error);
}

#if METASTATE_HAS_OPENMP
TEST_CASE("rwkv7 forward leaves the threads of Eigen's products to the calling thread's OpenMP setting") {
  // forward runs its products on opt.exec.threads threads through the calling thread's own
  // OpenMP setting; fixing Eigen's process-wide count instead (and "restoring" it) raced
  // with calls on other threads and left Eigen deaf to the program's later settings.
  const auto w = mm::initialise(fixture::small_config(1, 32, 2, 16, 40), 14, mm::init_kind::random);
  mm::rwkv7_state s(w.config, 1);
  const std::vector<std::int64_t> tokens{3, 7};
  mm::forward_options one;
  one.exec.threads = 1;
  one.logits = mm::logits_for::none;
  const int before = omp_get_max_threads();
  mm::forward(w, tokens.data(), 2, s, nullptr, one);
  CHECK(omp_get_max_threads() == before);
  omp_set_num_threads(before + 1);
  CHECK(Eigen::nbThreads() == before + 1);
  omp_set_num_threads(before);
}
#endif

TEST_CASE("rwkv7 configs with sizes that cannot run are refused") {
  auto zero_group = fixture::small_config(1, 32, 2, 16, 40);
  zero_group.group_size = 0;
  CHECK_THROWS_WITH_AS(mm::initialise(zero_group, 1),
                       "initialise: the GroupNorm group size 0 does not divide the attention width 32",
                       ms::shape_error);
  auto no_heads = fixture::small_config(2, 32, 2, 16, 40, 0, "FM");
  no_heads.heads = 0;
  CHECK_THROWS_WITH_AS(mm::initialise(no_heads, 1), doctest::Contains("initialise: need positive sizes"),
                       ms::shape_error);
  auto blocks = fixture::small_config(2, 32, 2, 16, 40);
  blocks.blocks.pop_back();
  CHECK_THROWS_WITH_AS(mm::initialise(blocks, 1), "initialise: 1 block kinds for 2 layers", ms::shape_error);
}

TEST_CASE("a new model has never grown, whatever original sizes its config carried") {
  auto c = mm::make_config(2, 64, 32, 50);  // (its original sizes: those it was made with)
  c.blocks = {mm::block_kind::channel_mix, mm::block_kind::meta_state};
  c.sse_dim = 16;
  c.original_heads = 1;
  const auto w = mm::initialise(c, 1);
  CHECK_FALSE(w.config.grown());
  CHECK(w.config.original_sse_dim == 16);
  CHECK(w.config.original_heads == 2);
}

TEST_CASE("rwkv7 load reports missing, extra and mis-shaped tensors by name") {
  auto w = mm::initialise(fixture::small_config(2, 32, 2, 16, 40), 15, mm::init_kind::random);
  fixture::temp_dir dir("load");
  auto write_without = [&](const std::string& skip, const std::string& extra, const std::string& reshape,
                           const std::string& key = "", const std::string& value = "") {
    ms::io::safetensors_writer out;
    for (auto& p : mm::parameters(w)) {
      if (p.name == skip) continue;
      auto shape = p.shape;
      if (p.name == reshape) shape = {p.size()};  // a matrix flattened
      out.add<float>(p.name, shape, p.data);
    }
    if (!extra.empty()) out.add<float>(extra, {1}, w.emb.data());
    if (!key.empty()) out.set_metadata(key, value);
    out.write(dir / "bad.safetensors");
    return ms::io::safetensors_file::open(dir / "bad.safetensors");
  };
  // Sizes before growth that growth cannot have produced (heads 2, head size 16, no projection).
  CHECK_THROWS_WITH_AS(mm::load(write_without("", "", "", "original_heads", "-5")),
                       doctest::Contains("metadata original_heads = -5 must be in [1, 2]"), ms::io_error);
  CHECK_THROWS_WITH_AS(mm::load(write_without("", "", "", "original_head_size", "1000")),
                       doctest::Contains("metadata original_head_size = 1000 must be in [1, 16]"), ms::io_error);
  CHECK_THROWS_WITH_AS(mm::load(write_without("", "", "", "original_projection", "1")),
                       doctest::Contains("metadata original_projection = 1 must be in [0, 0]"), ms::io_error);
  CHECK(mm::load(write_without("", "", "", "original_head_size", "8")).config.grown());
  CHECK_THROWS_WITH(mm::load(write_without("blocks.1.att.a2", "", "")),
                    doctest::Contains("missing tensor 'blocks.1.att.a2'"));
  CHECK_THROWS_WITH(mm::load(write_without("", "blocks.0.att.bogus", "")),
                    doctest::Contains("unexpected tensor 'blocks.0.att.bogus'"));
  CHECK_THROWS_WITH(mm::load(write_without("", "", "blocks.1.att.key.weight")),
                    doctest::Contains("tensor 'blocks.1.att.key.weight' has shape [1024], expected [32,32]"));
  // Vectors may be stored [C] instead of [1,1,C].
  ms::io::safetensors_writer out;
  for (auto& p : mm::parameters(w)) out.add<float>(p.name, {p.size()}, p.data);  // everything flat...
  out.write(dir / "flat.safetensors");
  CHECK_THROWS_WITH(mm::load(ms::io::safetensors_file::open(dir / "flat.safetensors")),
                    doctest::Contains("expected a matrix"));  // ...which matrices may not be
}

TEST_CASE("rwkv7 model matches the committed reference data (F16 checkpoints, fp64 expectations)") {
  // tests/data: random checkpoints with head sizes 16 and 64 and the logits and states the
  // fp64 reference computed for them; checked once against the official numpy logic
  // (BlinkDL/RWKV-LM rwkv_v7_numpy.py, run in fp64): RMS-relative difference <= 2e-15.
  for (const std::string name : {"rwkv7_n16", "rwkv7_n64"}) {
    CAPTURE(name);
    const std::string base = std::string(METASTATE_TEST_DATA) + "/" + name;
    const auto file = ms::io::safetensors_file::open(base + ".safetensors");
    const auto expected = ms::io::safetensors_file::open(base + ".expected.safetensors");
    const auto tokens = expected.read<std::int64_t>("tokens");
    const auto logits = expected.read<double>("logits");
    const auto w = mm::load(file);
    for (int chunk : {1, 24}) {
      mm::rwkv7_state s(w.config, 1);
      CHECK(ref::rms_relative(run(w, tokens, s, chunk), logits) <= 1e-5);
      for (int l = 0; l < w.config.layers; ++l) {
        const std::string p = "state." + std::to_string(l) + ".";
        CHECK(ref::rms_relative(s.att_kv[l], expected.read<double>(p + "att_kv")) <= 1e-5);
        CHECK(ref::rms_relative(std::vector<float>(s.ffn_x_prev[l].data(), s.ffn_x_prev[l].data() + w.config.width),
                                expected.read<double>(p + "ffn_x_prev")) <= 1e-5);
      }
    }
    // The reference itself has not drifted from the data it made.
    auto ref_state = ref_model::rwkv7(file).zero_state();
    CHECK(ref::rms_relative(ref_model::rwkv7(file).forward(tokens, ref_state), logits) <= 1e-12);
  }
}

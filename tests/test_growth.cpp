// Progressive growth (SPEC §5): exact at the moment of growth, live states, no dead units, masks, refusals.
#include <doctest/doctest.h>

#include <cmath>

#include <metastate/metastate.hpp>
#include <metastate/scaling/grow.hpp>

#include "model_fixture.hpp"
#include "reference.hpp"

namespace ms = metastate;
namespace mm = metastate::model;
using fixture::random_tokens;
using fixture::run;
namespace sc = metastate::scaling;

namespace {

struct model_case {
  const char* name;
  const char* blocks;
  int heads, head_size, sse_dim;
  sc::growth g;
};

const model_case cases[] = {
    {"rwkv7, head size 16 -> 32", "FF", 4, 16, 0, {32, 0, 1, 0.0}},
    {"rwkv7, heads 4 -> 6", "FF", 4, 16, 0, {0, 6, 2, 0.0}},
    {"rwkv7, both", "FF", 4, 16, 0, {48, 5, 3, 0.0}},
    {"meta-state, sse_dim follows N", "MM", 4, 16, 0, {32, 0, 4, 0.0}},
    {"meta-state, smaller sse_dim stays", "MM", 4, 16, 8, {32, 0, 5, 0.0}},
    {"mixed", "FMF", 4, 16, 0, {48, 0, 6, 0.0}},
};

mm::rwkv7_weights base_model(const model_case& c) {
  return mm::initialise(
      fixture::small_config(int(std::string(c.blocks).size()), 64, c.heads, c.head_size, 60, 0, c.blocks, c.sse_dim),
      31, mm::init_kind::random);
}

}  // namespace

TEST_CASE("growth is exact: grown and original logits agree (SPEC §7: 1e-6), sequence and step") {
  const auto tokens = random_tokens(25, 60, 32);
  for (const auto& c : cases) {
    CAPTURE(c.name);
    auto w = base_model(c);
    const auto grown = sc::grow(w, c.g);
    CHECK(grown.config.head_size == (c.g.head_size ? c.g.head_size : c.head_size));
    CHECK(grown.config.heads == (c.g.heads ? c.g.heads : c.heads));
    for (int chunk : {1, 7}) {
      CAPTURE(chunk);
      mm::rwkv7_state a(w.config, 1), b(grown.config, 1);
      CHECK(ref::rms_relative(run(grown, tokens, b, chunk), run(w, tokens, a, chunk)) <= 1e-6);
    }
  }
}

TEST_CASE("a live state grows with the model and the sequence continues without a restart") {
  const auto first = random_tokens(13, 60, 33), second = random_tokens(17, 60, 34);
  for (const auto& c : cases) {
    CAPTURE(c.name);
    auto w = base_model(c);
    const auto grown = sc::grow(w, c.g);
    mm::rwkv7_state original(w.config, 2);
    const std::vector<std::int64_t> both_rows = [&] {
      auto t = first;
      t.insert(t.end(), first.rbegin(), first.rend());  // two batch rows
      return t;
    }();
    std::vector<float> logits(both_rows.size() * 60);
    mm::forward_options opt;
    opt.chunk = 5;
    mm::forward(w, both_rows.data(), 13, original, logits.data(), opt);
    auto live = sc::grow_state(original, grown.config);
    std::vector<std::int64_t> more = second;
    more.insert(more.end(), second.begin(), second.end());
    std::vector<float> expected(more.size() * 60), got(more.size() * 60);
    mm::forward(w, more.data(), 17, original, expected.data(), opt);
    mm::forward(grown, more.data(), 17, live, got.data(), opt);
    CHECK(ref::rms_relative(got, expected) <= 1e-6);
  }
}

TEST_CASE("no dead units: perturbing each group of new parameters changes the logits") {
  const auto tokens = random_tokens(9, 60, 35);
  // Adds noise to the new entries of one tensor only; returns how much the logits moved.
  auto perturbed_change = [&](const mm::rwkv7_weights& grown, const std::string& name,
                              const std::vector<float>& baseline) {
    auto w = grown;
    auto mask_source = grown;
    const auto mask = sc::original_mask(mask_source, name);
    for (auto& p : mm::parameters(w))
      if (p.name == name) {
        std::mt19937 gen(1);
        std::normal_distribution<float> d(0.0f, 1e-2f);
        std::size_t changed = 0;
        for (std::int64_t i = 0; i < p.size(); ++i)
          if (!mask[i]) p.data[i] += d(gen), ++changed;
        REQUIRE_MESSAGE(changed > 0, name << " has no new entries");
      }
    mm::rwkv7_state s(w.config, 1);
    return ref::rms_relative(run(w, tokens, s, 3), baseline);
  };
  {
    auto w = base_model(cases[2]);
    const auto grown = sc::grow(w, cases[2].g);
    mm::rwkv7_state s(grown.config, 1);
    const auto baseline = run(grown, tokens, s, 3);
    for (const char* name : {"blocks.0.att.key.weight", "blocks.1.att.output.weight", "blocks.1.att.key.weight"}) {
      CAPTURE(name);
      CHECK(perturbed_change(grown, name, baseline) > 1e-6);
    }
  }
  {
    auto w = base_model(cases[3]);
    const auto grown = sc::grow(w, cases[3].g);
    mm::rwkv7_state s(grown.config, 1);
    const auto baseline = run(grown, tokens, s, 3);
    for (const char* name : {"blocks.0.att.key.weight", "blocks.0.att.output.weight", "blocks.0.ms.proj",
                             "blocks.1.ms.output.weight"}) {
      CAPTURE(name);
      CHECK(perturbed_change(grown, name, baseline) > 1e-6);
    }
  }
}

TEST_CASE("growth zeroes the new key rows of existing heads and draws those of new heads (SPEC §5)") {
  auto w = base_model(cases[2]);  // 4 heads of 16 -> 5 heads of 48
  auto grown = sc::grow(w, cases[2].g);
  for (auto& p : mm::parameters(grown))
    if (p.name == "blocks.1.att.key.weight") {
      const std::int64_t columns = p.shape.back();
      REQUIRE(p.shape[0] == 5 * 48);
      double old_heads_new_rows = 0, new_head = 0;
      for (std::int64_t row = 0; row < p.shape[0]; ++row)
        for (std::int64_t c = 0; c < columns; ++c) {
          const double x = std::abs(p.data[row * columns + c]);
          if (row / 48 < 4 && row % 48 >= 16) old_heads_new_rows += x;
          if (row / 48 == 4) new_head += x;
        }
      CHECK(old_heads_new_rows == 0);
      CHECK(new_head > 0);
    }
}

TEST_CASE("negative control: with the group size following the head size, growth is NOT exact") {
  const auto tokens = random_tokens(15, 60, 36);
  auto w = base_model(cases[0]);
  auto grown = sc::grow(w, cases[0].g);
  mm::rwkv7_state a(w.config, 1), b(grown.config, 1);
  const auto original = run(w, tokens, a, 4);
  CHECK(ref::rms_relative(run(grown, tokens, b, 4), original) <= 1e-6);
  grown.config.group_size = grown.config.head_size;  // GroupNorm per (grown) head
  mm::rwkv7_state c(grown.config, 1);
  const double difference = ref::rms_relative(run(grown, tokens, c, 4), original);
  MESSAGE("group size following the head size changes the logits by " << difference << " (RMS-relative)");
  CHECK(difference > 1e-3);
}

TEST_CASE("growth masks mark original and new entries, and survive save/load") {
  auto w = base_model(cases[3]);
  auto grown = sc::grow(w, cases[3].g);  // 4 heads of 16 -> 32, P added, sse_dim 16 -> 32
  const auto key = sc::original_mask(grown, "blocks.0.att.key.weight");  // [128, 64]
  std::size_t original = 0;
  for (auto m : key) original += m;
  CHECK(original == 4u * 16 * 64);
  CHECK(key[0] == 1);
  CHECK(key[16 * 64] == 0);  // head 0, channel 16: new
  CHECK(key[32 * 64] == 1);  // head 1, channel 0
  const auto proj = sc::original_mask(grown, "blocks.0.ms.proj");
  CHECK(std::count(proj.begin(), proj.end(), 1) == 0);  // P did not exist before growth
  const auto emb = sc::original_mask(grown, "emb.weight");
  CHECK(std::count(emb.begin(), emb.end(), 0) == 0);

  fixture::temp_dir dir("growth");
  mm::save(grown, dir / "g.safetensors");
  auto loaded = mm::load(ms::io::safetensors_file::open(dir / "g.safetensors"));
  CHECK(loaded.config.original_head_size == 16);
  CHECK(loaded.config.original_sse_dim == 16);
  CHECK(sc::original_mask(loaded, "blocks.1.ms.output.weight") == sc::original_mask(grown, "blocks.1.ms.output.weight"));
}

TEST_CASE("bad growth requests are refused with a message") {
  auto rwkv7 = base_model(cases[0]);
  CHECK_THROWS_WITH_AS(sc::grow(rwkv7, {8, 0, 0, 0.0}), doctest::Contains("cannot shrink"), ms::shape_error);
  CHECK_THROWS_WITH_AS(sc::grow(rwkv7, {24, 0, 0, 0.0}),
                       doctest::Contains("head size 24 is not a multiple of the GroupNorm group size 16"),
                       ms::shape_error);
  auto meta = base_model(cases[3]);
  CHECK_THROWS_WITH_AS(sc::grow(meta, {0, 6, 0, 0.0}), doctest::Contains("cannot add heads to a model with Meta-State"),
                       ms::shape_error);
  CHECK_THROWS_WITH_AS(sc::grow(meta, {0, 0, 0, -1.0}),
                       doctest::Contains("meta_state_output_std must be finite and >= 0"), ms::value_error);
  // A state grows only to a config at least as large, with the same layers, width and blocks.
  const auto grown = sc::grow(rwkv7, {32, 0, 0, 0.0});
  const mm::rwkv7_state small(rwkv7.config, 1), large(grown.config, 1);
  CHECK_THROWS_WITH_AS(sc::grow_state(large, rwkv7.config), doctest::Contains("grow_state: cannot grow a state"),
                       ms::shape_error);
  CHECK_THROWS_WITH_AS(sc::grow_state(small, meta.config), doctest::Contains("blocks must match"), ms::shape_error);
  CHECK_NOTHROW(sc::grow_state(small, grown.config));
}

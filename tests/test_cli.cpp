// The `metastate` command-line tool, run as a process on files this test writes.
#include <doctest/doctest.h>

#include <metastate/io/safetensors.hpp>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "model_fixture.hpp"
#include "reference_model.hpp"
#include "wkv_harness.hpp"

namespace ms = metastate;

namespace {

struct command_result {
  int exit_code;
  std::string output;
};

command_result run_cli(const std::string& args) {
  const std::string command = std::string(METASTATE_CLI) + " " + args + " 2>&1";
  std::string output;
  FILE* pipe = popen(command.c_str(), "r");
  REQUIRE(pipe != nullptr);
  char buffer[512];
  while (fgets(buffer, sizeof buffer, pipe)) output += buffer;
  const int status = pclose(pipe);
  return {WIFEXITED(status) ? WEXITSTATUS(status) : -1, output};
}

void write_problem(const ref::wkv_problem& p, const std::string& file, bool with_state) {
  ms::io::safetensors_writer out;
  const std::vector<std::int64_t> shape{p.B, p.T, p.H, p.N};
  const std::pair<const char*, const std::vector<double>*> tensors[] = {
      {"r", &p.r}, {"w", &p.w}, {"k", &p.k}, {"v", &p.v}, {"a", &p.a}, {"b", &p.b}};
  for (const auto& [name, x] : tensors) out.add<float>(name, shape, harness::convert<float>(*x).data());
  if (with_state) out.add<float>("s0", {p.B, p.H, p.N, p.N}, harness::convert<float>(p.s0).data());
  out.write(file);
}

}  // namespace

TEST_CASE("metastate wkv7 matches the fp64 reference, for every backend and thread count") {
  fixture::temp_dir dir("cli");
  auto p = ref::random_problem(2, 19, 3, 24, 21);
  write_problem(p, dir / "in.safetensors", true);
  std::vector<double> state = p.s0;
  const auto y = ref::wkv7(p, state);
  for (const char* backend : {"scalar", "eigen", "simd"})
    for (int threads : {1, 2}) {
      CAPTURE(backend);
      const auto res = run_cli("wkv7 --in " + dir / "in.safetensors" + " --out " + dir / "out.safetensors" +
                               " --backend " + backend + " --threads " + std::to_string(threads));
      REQUIRE_MESSAGE(res.exit_code == 0, res.output);
      const auto out = ms::io::safetensors_file::open(dir / "out.safetensors");
      CHECK(ref::rms_relative(out.read<float>("y", {2, 19, 3, 24}), y) <= 1e-6);
      CHECK(ref::rms_relative(out.read<float>("sT", {2, 3, 24, 24}), state) <= 1e-6);
    }
}

TEST_CASE("metastate wkv7 starts from a zero state when s0 is absent") {
  fixture::temp_dir dir("cli");
  auto p = ref::random_problem(1, 5, 1, 16, 22);
  write_problem(p, dir / "in.safetensors", false);
  std::fill(p.s0.begin(), p.s0.end(), 0.0);
  std::vector<double> state = p.s0;
  const auto y = ref::wkv7(p, state);
  REQUIRE(run_cli("wkv7 --in " + dir / "in.safetensors" + " --out " + dir / "out.safetensors").exit_code == 0);
  CHECK(ref::rms_relative(ms::io::safetensors_file::open(dir / "out.safetensors").read<float>("y"), y) <= 1e-6);
}

TEST_CASE("metastate wkv7 rejects bad input with a message and a non-zero exit code") {
  fixture::temp_dir dir("cli");
  const auto p = ref::random_problem(1, 4, 2, 8, 23);
  const std::string in = dir / "in.safetensors", out = " --out " + dir / "out.safetensors";
  write_problem(p, in, true);
  std::ifstream file(in, std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  auto write_bytes = [&](const std::string& name, const std::string& content) {
    std::ofstream(dir / name, std::ios::binary) << content;
    return dir / name;
  };

  SUBCASE("missing file") {
    const auto res = run_cli("wkv7 --in " + dir / "absent.safetensors" + out);
    CHECK(res.exit_code != 0);
    CHECK(res.output.find("absent.safetensors") != std::string::npos);
  }
  SUBCASE("truncated file") {
    const auto res = run_cli("wkv7 --in " + write_bytes("cut.safetensors", bytes.substr(0, bytes.size() - 100)) + out);
    CHECK(res.exit_code != 0);
    CHECK(res.output.find("error") != std::string::npos);
  }
  SUBCASE("header length past the end of the file") {
    std::string broken = bytes;
    broken[5] = '\x7f';
    const auto res = run_cli("wkv7 --in " + write_bytes("long.safetensors", broken) + out);
    CHECK(res.exit_code != 0);
    CHECK(res.output.find("error") != std::string::npos);
  }
  SUBCASE("a tensor with the wrong shape") {
    ms::io::safetensors_writer w;
    const std::vector<std::int64_t> shape{1, 4, 2, 8}, wrong{1, 4, 2, 4};
    for (const char* name : {"r", "w", "k", "v", "a"}) w.add<float>(name, shape, harness::convert<float>(p.r).data());
    w.add<float>("b", wrong, harness::convert<float>(p.b).data());
    w.write(dir / "shape.safetensors");
    const auto res = run_cli("wkv7 --in " + dir / "shape.safetensors" + out);
    CHECK(res.exit_code != 0);
    CHECK(res.output.find("'b'") != std::string::npos);
  }
  SUBCASE("a decay outside (0, 1]") {
    auto bad = p;
    bad.w[3] = 1.5;
    write_problem(bad, dir / "decay.safetensors", false);
    const auto res = run_cli("wkv7 --in " + dir / "decay.safetensors" + out);
    CHECK(res.exit_code != 0);
    CHECK(res.output.find("outside (0, 1]") != std::string::npos);
  }
  SUBCASE("a non-finite initial state") {
    auto bad = p;
    bad.s0[5] = std::nan("");
    write_problem(bad, dir / "nan.safetensors", true);
    const auto res = run_cli("wkv7 --in " + dir / "nan.safetensors" + out);
    CHECK(res.exit_code != 0);
    CHECK(res.output.find("tensor 's0' has a non-finite value at flat index 5") != std::string::npos);
  }
  SUBCASE("no tokens, and a state too large to hold") {
    ms::io::safetensors_writer w;
    const float none = 0;
    for (const char* name : {"r", "w", "k", "v", "a", "b"}) w.add<float>(name, {1, 0, 1, std::int64_t(1) << 32}, &none);
    w.write(dir / "huge.safetensors");
    const auto res = run_cli("wkv7 --in " + dir / "huge.safetensors" + out);
    CHECK(res.exit_code != 0);
    CHECK(res.output.find("the state [B,H,N,N] for 'r' of shape [1,0,1,4294967296] is too large") != std::string::npos);
  }
  SUBCASE("an unknown backend") {
    CHECK(run_cli("wkv7 --in " + in + out + " --backend gpu").exit_code != 0);
  }
}

TEST_CASE("metastate init + forward match the fp64 reference in sequence and step mode") {
  fixture::temp_dir dir("cli_forward");
  const std::string model = dir / "m.safetensors";
  REQUIRE(run_cli("init --layers 2 --width 64 --head-size 16 --vocab 70 --seed 3 --init random --out " + model)
              .exit_code == 0);
  const auto file = ms::io::safetensors_file::open(model);
  const ref_model::rwkv7 reference(file);
  const std::vector<std::int64_t> tokens{5, 0, 69, 12, 12, 40, 7};
  auto ref_state = reference.zero_state();
  const auto expected = reference.forward(tokens, ref_state);
  std::vector<float> sequence_logits;
  for (const char* mode : {"sequence", "step"}) {
    CAPTURE(mode);
    const auto res = run_cli("forward --model " + model + " --tokens 5,0,69,12,12,40,7 --mode " + mode +
                             " --chunk 3 --out " + dir / "out.safetensors");
    REQUIRE_MESSAGE(res.exit_code == 0, res.output);
    const auto out = ms::io::safetensors_file::open(dir / "out.safetensors");
    const auto logits = out.read<float>("logits", {7, 70});
    CHECK(ref::rms_relative(logits, expected) <= 1e-5);
    CHECK(ref::rms_relative(out.read<float>("state.1.att_kv", {4, 16, 16}), ref_state.att_kv[1]) <= 1e-5);
    CHECK(ref::rms_relative(out.read<float>("state.0.ffn_x_prev", {64}), ref_state.ffn_x_prev[0]) <= 1e-5);
    if (sequence_logits.empty()) sequence_logits = logits;
    else CHECK(ref::rms_relative(logits, sequence_logits) <= 1e-6);
  }
}

TEST_CASE("metastate forward continues from a saved state, reads a tokens file and rejects bad tokens") {
  fixture::temp_dir dir("cli_state");
  const std::string model = dir / "m.safetensors";
  REQUIRE(run_cli("init --layers 1 --width 32 --head-size 16 --vocab 30 --init random --out " + model).exit_code == 0);
  REQUIRE(run_cli("forward --model " + model + " --tokens 1,2,3,4,5 --out " + dir / "all.safetensors").exit_code == 0);
  REQUIRE(run_cli("forward --model " + model + " --tokens 1,2,3 --state-out " + dir / "s.safetensors" + " --out " +
                  dir / "a.safetensors")
              .exit_code == 0);
  ms::io::safetensors_writer tokens_file;
  const std::int32_t rest[] = {4, 5};
  tokens_file.add<std::int32_t>("tokens", {2}, rest);
  tokens_file.write(dir / "tokens.safetensors");
  const auto res = run_cli("forward --model " + model + " --tokens-file " + dir / "tokens.safetensors" +
                           " --state-in " + dir / "s.safetensors" + " --out " + dir / "b.safetensors");
  REQUIRE_MESSAGE(res.exit_code == 0, res.output);
  const auto all = ms::io::safetensors_file::open(dir / "all.safetensors").read<float>("logits");
  const auto tail = ms::io::safetensors_file::open(dir / "b.safetensors").read<float>("logits", {2, 30});
  CHECK(ref::rms_relative(tail, std::vector<float>(all.begin() + 3 * 30, all.end())) <= 1e-6);

  const auto bad = run_cli("forward --model " + model + " --tokens 1,30 --out " + dir / "x.safetensors");
  CHECK(bad.exit_code != 0);
  CHECK(bad.output.find("token 30 at position 1 is outside the vocabulary [0, 30)") != std::string::npos);
  const auto junk = run_cli("forward --model " + model + " --tokens 1,x --out " + dir / "x.safetensors");
  CHECK(junk.exit_code != 0);
  CHECK(junk.output.find("'x' is not an integer") != std::string::npos);
  for (const auto& [list, message] : std::vector<std::pair<std::string, std::string>>{
           {"1,", "--tokens: '' is not an integer"},
           {"' 1'", "--tokens: ' 1' is not an integer"},
           {"''", "--tokens: no tokens given"}}) {
    CAPTURE(list);
    const auto res = run_cli("forward --model " + model + " --tokens " + list + " --out " + dir / "x.safetensors");
    CHECK(res.exit_code != 0);
    CHECK_MESSAGE(res.output.find(message) != std::string::npos, res.output);
  }
  ms::io::safetensors_writer empty_file;
  empty_file.add<std::int32_t>("tokens", {0}, rest);
  empty_file.write(dir / "empty.safetensors");
  const auto empty = run_cli("forward --model " + model + " --tokens-file " + dir / "empty.safetensors" + " --out " +
                             dir / "x.safetensors");
  CHECK(empty.exit_code != 0);
  CHECK_MESSAGE(empty.output.find("tensor 'tokens' holds no tokens") != std::string::npos, empty.output);
  const auto chunk = run_cli("forward --model " + model + " --tokens 1 --chunk 0 --out " + dir / "x.safetensors");
  CHECK(chunk.exit_code != 0);
  CHECK_MESSAGE(chunk.output.find("Value 0 not in range 1 to 2147483647") != std::string::npos, chunk.output);
  REQUIRE(run_cli("init --layers 1 --width 32 --head-size 8 --vocab 30 --out " + dir / "other.safetensors").exit_code == 0);
  const auto other = run_cli("forward --model " + dir / "other.safetensors" + " --tokens 1 --state-in " +
                             dir / "s.safetensors" + " --out " + dir / "x.safetensors");
  CHECK(other.exit_code != 0);
  CHECK(other.output.find("the state is for a model with") != std::string::npos);
}

TEST_CASE("metastate grow: the grown model continues a live state with the same logits") {
  fixture::temp_dir dir("cli_grow");
  const std::string model = dir / "m.safetensors", grown = dir / "g.safetensors";
  REQUIRE(run_cli("init --layers 2 --width 64 --head-size 16 --vocab 40 --block meta-state,ffn --init random --out " +
                  model).exit_code == 0);
  REQUIRE(run_cli("forward --model " + model + " --tokens 1,2,3,4,5,6 --out " + dir / "all.safetensors").exit_code == 0);
  REQUIRE(run_cli("forward --model " + model + " --tokens 1,2,3 --state-out " + dir / "s.safetensors" + " --out " +
                  dir / "a.safetensors").exit_code == 0);
  const auto res = run_cli("grow --model " + model + " --out " + grown + " --head-size 32 --state-in " +
                           dir / "s.safetensors" + " --state-out " + dir / "s2.safetensors");
  REQUIRE_MESSAGE(res.exit_code == 0, res.output);
  REQUIRE(run_cli("forward --model " + grown + " --tokens 4,5,6 --state-in " + dir / "s2.safetensors" + " --out " +
                  dir / "b.safetensors").exit_code == 0);
  const auto all = ms::io::safetensors_file::open(dir / "all.safetensors").read<float>("logits");
  const auto tail = ms::io::safetensors_file::open(dir / "b.safetensors").read<float>("logits", {3, 40});
  CHECK(ref::rms_relative(tail, std::vector<float>(all.begin() + 3 * 40, all.end())) <= 1e-6);
  const auto refused = run_cli("grow --model " + model + " --out " + grown + " --heads 8");
  CHECK(refused.exit_code != 0);
  CHECK(refused.output.find("cannot add heads to a model with Meta-State layers") != std::string::npos);
}

TEST_CASE("metastate init --sse-dim makes a model that has never grown, and needs a Meta-State layer") {
  fixture::temp_dir dir("cli_init");
  const std::string model = dir / "m.safetensors";
  const auto made = run_cli("init --layers 2 --width 64 --head-size 32 --vocab 50 --block ffn,meta-state --sse-dim 16 "
                            "--out " + model);
  REQUIRE_MESSAGE(made.exit_code == 0, made.output);
  const auto file = ms::io::safetensors_file::open(model);
  CHECK(file.metadata().at("sse_dim") == "16");
  CHECK(file.metadata().count("original_sse_dim") == 0);
  const auto loaded = ms::model::load(file);
  CHECK(loaded.config.sse_dim == 16);
  CHECK_FALSE(loaded.config.grown());
  const auto refused = run_cli("init --layers 2 --width 64 --head-size 32 --vocab 50 --sse-dim 16 --out " + model);
  CHECK(refused.exit_code != 0);
  CHECK(refused.output.find("--sse-dim: no layer is a Meta-State layer") != std::string::npos);
}

// The `metastate` command-line tool, run as a process on files this test writes.
#include <doctest/doctest.h>

#include <metastate/io/safetensors.hpp>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "wkv_harness.hpp"

namespace ms = metastate;
namespace fs = std::filesystem;

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

struct temp_dir {
  fs::path path = fs::temp_directory_path() / ("metastate_cli_" + std::to_string(::getpid()));
  temp_dir() { fs::create_directories(path); }
  ~temp_dir() { fs::remove_all(path); }
  std::string operator/(const std::string& name) const { return (path / name).string(); }
};

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
  temp_dir dir;
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
  temp_dir dir;
  auto p = ref::random_problem(1, 5, 1, 16, 22);
  write_problem(p, dir / "in.safetensors", false);
  std::fill(p.s0.begin(), p.s0.end(), 0.0);
  std::vector<double> state = p.s0;
  const auto y = ref::wkv7(p, state);
  REQUIRE(run_cli("wkv7 --in " + dir / "in.safetensors" + " --out " + dir / "out.safetensors").exit_code == 0);
  CHECK(ref::rms_relative(ms::io::safetensors_file::open(dir / "out.safetensors").read<float>("y"), y) <= 1e-6);
}

TEST_CASE("metastate wkv7 rejects bad input with a message and a non-zero exit code") {
  temp_dir dir;
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
  SUBCASE("an unknown backend") {
    CHECK(run_cli("wkv7 --in " + in + out + " --backend gpu").exit_code != 0);
  }
}

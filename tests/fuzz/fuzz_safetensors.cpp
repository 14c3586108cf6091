// libFuzzer harness of the safetensors reader: parses the input with safetensors_file::from_bytes, reads every
// tensor as float, int32 and half, checks the reader's promises, and writes the file back and re-reads it.
//
// Expected failures are io_error (malformed file, impossible conversion, integer out of range) and shape_error;
// any other exception escapes and libFuzzer reports it as a crash, as it does a sanitizer report or a broken
// invariant (abort). `fuzz_safetensors -write_seeds=DIR` writes a small seed corpus to DIR and exits.
#include <Eigen/Core>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <metastate/io/safetensors.hpp>
#include <string>
#include <type_traits>
#include <vector>

namespace io = metastate::io;

namespace {

/// Reports a broken promise of the reader and aborts (a crash for libFuzzer).
void require(bool ok, const char* what, const std::string& name) {
  if (ok) return;
  std::fprintf(stderr, "fuzz_safetensors: %s (tensor '%s')\n", what, name.c_str());
  std::abort();
}

bool is_float(io::dtype t) {
  return t == io::dtype::F64 || t == io::dtype::F32 || t == io::dtype::F16 || t == io::dtype::BF16;
}
bool is_int(io::dtype t) { return t == io::dtype::I64 || t == io::dtype::I32; }

/// The dtype T is stored as.
template <class T>
constexpr io::dtype stored_as() {
  if constexpr (std::is_same_v<T, float>) return io::dtype::F32;
  if constexpr (std::is_same_v<T, std::int32_t>) return io::dtype::I32;
  return io::dtype::F16;
}

/// read<T>(name): must succeed with numel values where `convertible`, else throw io_error; an integer
/// conversion may also throw io_error for a value out of range.
template <class T>
void check_read(const io::safetensors_file& file, const io::tensor_info& info, bool convertible) {
  try {
    const std::vector<T> values = file.read<T>(info.name);
    require(convertible, "read succeeded for an impossible conversion", info.name);
    require(values.size() == static_cast<std::size_t>(info.numel()), "read returned the wrong count", info.name);
    if (info.type == stored_as<T>())
      require(values.empty() || std::memcmp(values.data(), info.data, info.nbytes) == 0,
              "read of the stored type changed the bytes", info.name);
  } catch (const metastate::io_error&) {
    require(!convertible || std::is_integral_v<T>, "read threw for a possible conversion", info.name);
  }
}

void fuzz_one(std::vector<std::byte> bytes) {
  const std::size_t size = bytes.size();
  const io::safetensors_file file = io::safetensors_file::from_bytes(std::move(bytes));
  io::safetensors_writer writer;
  for (const auto& [key, value] : file.metadata()) writer.set_metadata(key, value);
  for (const std::string& name : file.names()) {
    const io::tensor_info& info = file.at(name);
    require(info.name == name && file.find(name) == &info, "at/find disagree with names()", name);
    require(info.numel() >= 0 && static_cast<std::uint64_t>(info.numel()) * io::dtype_size(info.type) == info.nbytes,
            "nbytes is not numel * dtype_size", name);
    require(info.nbytes <= size, "tensor larger than the file", name);

    check_read<float>(file, info, is_float(info.type));
    check_read<std::int32_t>(file, info, is_int(info.type));
    check_read<Eigen::half>(file, info, is_float(info.type));

    // The shape-checked read rejects any other shape with shape_error.
    std::vector<std::int64_t> other = info.shape;
    other.push_back(1);
    try {
      file.read<float>(name, other);
      require(false, "read with a wrong expected shape succeeded", name);
    } catch (const metastate::shape_error&) {
    }
    if (is_float(info.type)) (void)file.read<float>(name, info.shape);

    writer.add(name, info.type, info.shape, info.data, info.nbytes);
  }

  // What was read writes back to a file that reads the same.
  const io::safetensors_file again = io::safetensors_file::from_bytes(writer.to_bytes());
  require(again.names() == file.names(), "round trip changed the tensor names", "");
  require(again.metadata() == file.metadata(), "round trip changed the metadata", "");
  for (const std::string& name : file.names()) {
    const io::tensor_info &a = file.at(name), &b = again.at(name);
    require(a.type == b.type && a.shape == b.shape && a.nbytes == b.nbytes &&
                (a.nbytes == 0 || std::memcmp(a.data, b.data, a.nbytes) == 0),
            "round trip changed a tensor", name);
  }
}

/// A header of `json` (length prefix added) followed by `data` bytes: files the writer would not make.
void write_raw(const std::string& path, const std::string& json, const std::string& data) {
  std::ofstream out(path, std::ios::binary);
  const std::uint64_t n = json.size();
  for (int i = 0; i < 8; ++i) out.put(static_cast<char>(n >> (8 * i)));
  out << json << data;
}

void write_seeds(const std::string& dir) {
  std::filesystem::create_directories(dir);
  const float inf = std::numeric_limits<float>::infinity(), nan = std::numeric_limits<float>::quiet_NaN();
  const std::vector<float> f32{1.5f, -2.25f, 3.0f, 0.0f, inf, nan};
  const std::vector<double> f64{0.1, -0.2, 1e300, -1e-310};
  const std::vector<Eigen::half> f16{Eigen::half(0.5f), Eigen::half(-1.0f), Eigen::half(65504.0f),
                                     Eigen::half(6e-8f)};
  const std::vector<Eigen::bfloat16> bf16{Eigen::bfloat16(1.0f), Eigen::bfloat16(-3.5f)};
  const std::vector<std::int64_t> i64{-1, std::numeric_limits<std::int64_t>::max(), 7, std::int64_t{1} << 40};
  const std::vector<std::int32_t> i32{4, -5, std::numeric_limits<std::int32_t>::min()};
  const std::vector<std::uint8_t> u8{0, 1, 255};

  io::safetensors_writer all;
  all.add("f32", {2, 3}, f32.data());
  all.add("f64", {1, 1, 4}, f64.data());
  all.add("f16", {4}, f16.data());
  all.add("bf16", {2}, bf16.data());
  all.add("i64", {2, 2}, i64.data());
  all.add("i32", {3}, i32.data());
  all.add("u8", io::dtype::U8, {3}, u8.data(), u8.size());
  all.add("empty", io::dtype::BOOL, {0, 5}, nullptr, 0);
  all.set_metadata("format", "pt");
  all.write(dir + "/all_dtypes.safetensors");

  io::safetensors_writer scalar;
  scalar.add("s", {}, f32.data());
  scalar.write(dir + "/scalar.safetensors");

  io::safetensors_writer none;
  none.write(dir + "/empty.safetensors");

  // Unpadded header, tensors out of data order, a gap in the data buffer.
  write_raw(dir + "/unordered.safetensors",
            R"({"b":{"dtype":"I32","shape":[1],"data_offsets":[8,12]},)"
            R"("a":{"dtype":"F16","shape":[2],"data_offsets":[0,4]},"__metadata__":{"k":"v"}})",
            std::string(12, '\x3c'));
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int* argc, char*** argv) {
  const std::string flag = "-write_seeds=";
  for (int i = 1; i < *argc; ++i) {
    const std::string arg = (*argv)[i];
    if (arg.compare(0, flag.size(), flag) == 0) {
      try {
        write_seeds(arg.substr(flag.size()));
      } catch (const std::exception& e) {
        std::fprintf(stderr, "fuzz_safetensors: cannot write the seeds: %s\n", e.what());
        std::exit(1);
      }
      std::exit(0);
    }
  }
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::vector<std::byte> bytes(size);
  if (size != 0) std::memcpy(bytes.data(), data, size);
  try {
    fuzz_one(std::move(bytes));
  } catch (const metastate::io_error&) {
  } catch (const metastate::shape_error&) {
  }
  return 0;
}

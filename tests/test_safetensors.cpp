// Tests of metastate/io/safetensors.hpp: round trips, conversions, and rejection of malformed files.
#include <doctest/doctest.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <limits>
#include <metastate/io/safetensors.hpp>
#include <string>
#include <vector>

using metastate::io_error;
using metastate::shape_error;
using namespace metastate::io;

namespace {

/// A unique path under the temp directory, removed on destruction.
struct temp_path {
  std::filesystem::path path;
  temp_path() {
    static int counter = 0;
    path = std::filesystem::temp_directory_path() /
           ("metastate_test_safetensors_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
  }
  ~temp_path() {
    std::error_code ignored;
    std::filesystem::remove_all(path, ignored);
  }
  std::string str() const { return path.string(); }
};

/// A file of `header` (length prefix added) followed by `data_size` zero bytes.
std::vector<std::byte> raw_file(const std::string& header, std::size_t data_size = 0) {
  std::vector<std::byte> bytes(8);
  for (std::size_t i = 0; i < 8; ++i)
    bytes[i] = static_cast<std::byte>(static_cast<std::uint64_t>(header.size()) >> (8 * i));
  for (const char c : header) bytes.push_back(static_cast<std::byte>(c));
  bytes.resize(bytes.size() + data_size);
  return bytes;
}

/// doctest::Contains of a std::string.
doctest::Contains contains(const std::string& text) { return doctest::Contains(text.c_str()); }

/// Checks that from_bytes rejects `bytes` with an io_error whose message contains `expected`.
void check_rejects(std::vector<std::byte> bytes, const std::string& expected) {
  CHECK_THROWS_WITH_AS(safetensors_file::from_bytes(std::move(bytes)), contains(expected), io_error);
}

/// A header of one tensor 'w' with the JSON `fields`, and 8 data bytes.
std::vector<std::byte> tensor_w(const std::string& fields) { return raw_file(R"({"w":{)" + fields + "}}", 8); }

}  // namespace

TEST_CASE("safetensors round trip") {
  const std::vector<float> f32{1.5f, -2.25f, 3.0f, 0.0f};
  const std::vector<double> f64{0.1, -0.2, 0.3, 1e300};
  const std::vector<Eigen::half> f16{Eigen::half(0.5f), Eigen::half(-1.0f), Eigen::half(65504.0f)};
  const std::vector<Eigen::bfloat16> bf16{Eigen::bfloat16(1.0f), Eigen::bfloat16(-3.5f)};
  const std::vector<std::int64_t> i64{-1, std::numeric_limits<std::int64_t>::max(), 7};
  const std::vector<std::int32_t> i32{4, -5};

  safetensors_writer writer;
  writer.add("f32", {4}, f32.data());
  writer.add("f64", {1, 1, 4}, f64.data());
  writer.add("f16", {3}, f16.data());
  writer.add("bf16", {1, 1, 2}, bf16.data());
  writer.add("i64", {3}, i64.data());
  writer.add("i32", {2}, i32.data());
  writer.add("empty", dtype::U8, {0, 5}, nullptr, 0);
  writer.set_metadata("format", "pt");
  writer.set_metadata("model", "rwkv7");

  const auto check = [&](const safetensors_file& file) {
    CHECK(file.names() == std::vector<std::string>{"bf16", "empty", "f16", "f32", "f64", "i32", "i64"});
    CHECK(file.metadata() == std::map<std::string, std::string>{{"format", "pt"}, {"model", "rwkv7"}});
    CHECK(file.at("f64").type == dtype::F64);
    CHECK(file.at("f64").shape == std::vector<std::int64_t>{1, 1, 4});
    CHECK(file.at("f64").numel() == 4);
    CHECK(file.at("empty").numel() == 0);
    CHECK(file.at("empty").nbytes == 0);
    CHECK(file.find("missing") == nullptr);
    CHECK(file.read<float>("f32") == f32);
    CHECK(file.read<double>("f64", {1, 1, 4}) == f64);
    CHECK(file.read<Eigen::half>("f16") == f16);
    CHECK(file.read<Eigen::bfloat16>("bf16") == bf16);
    CHECK(file.read<std::int64_t>("i64") == i64);
    CHECK(file.read<std::int32_t>("i32") == i32);
  };

  SUBCASE("to_bytes / from_bytes") {
    const std::vector<std::byte> bytes = writer.to_bytes();
    std::uint64_t header_size = 0;
    for (int i = 7; i >= 0; --i) header_size = header_size << 8 | std::to_integer<std::uint64_t>(bytes[i]);
    CHECK((8 + header_size) % 8 == 0);
    CHECK(static_cast<char>(bytes[8 + header_size - 1]) != '\0');
    const auto file = safetensors_file::from_bytes(bytes);
    CHECK(file.source() == "<memory>");
    check(file);
  }
  SUBCASE("write / open, and the file moves") {
    const temp_path tmp;
    writer.write(tmp.str());
    auto opened = safetensors_file::open(tmp.str());
    CHECK(opened.source() == tmp.str());
    safetensors_file moved = std::move(opened);
    check(moved);
    safetensors_file assigned = safetensors_file::from_bytes(raw_file("{}"));
    assigned = std::move(moved);
    check(assigned);
  }
}

TEST_CASE("safetensors conversions") {
  const std::vector<Eigen::half> f16{Eigen::half(0.5f), Eigen::half(-2.0f), Eigen::half(65504.0f),
                                     Eigen::half(0.099975586f)};
  const std::vector<Eigen::bfloat16> bf16{Eigen::bfloat16(1.0f), Eigen::bfloat16(-3.5f), Eigen::bfloat16(256.0f)};
  const std::vector<float> f32{0.1f, -1.0f};
  const std::vector<std::int64_t> i64{1, -2, std::int64_t{1} << 40};
  safetensors_writer writer;
  writer.add("f16", {4}, f16.data());
  writer.add("bf16", {3}, bf16.data());
  writer.add("f32", {2}, f32.data());
  writer.add("i64", {3}, i64.data());
  const std::vector<std::int8_t> i8{1, 2};
  writer.add("i8", dtype::I8, {2}, i8.data(), i8.size());
  const auto file = safetensors_file::from_bytes(writer.to_bytes());

  SUBCASE("floating") {
    CHECK(file.read<float>("f16") == std::vector<float>{0.5f, -2.0f, 65504.0f, 0.099975586f});
    CHECK(file.read<float>("bf16") == std::vector<float>{1.0f, -3.5f, 256.0f});
    CHECK(file.read<double>("f16") == std::vector<double>{0.5, -2.0, 65504.0, 0.099975586f});
    CHECK(file.read<double>("f32") == std::vector<double>{0.1f, -1.0f});
    CHECK(file.read<Eigen::half>("bf16") ==
          std::vector<Eigen::half>{Eigen::half(1.0f), Eigen::half(-3.5f), Eigen::half(256.0f)});
    CHECK(file.read<Eigen::bfloat16>("f32")[1] == Eigen::bfloat16(-1.0f));
  }
  SUBCASE("integer") {
    CHECK(file.read<std::int64_t>("i64") == i64);
    CHECK_THROWS_WITH_AS(file.read<std::int32_t>("i64"), doctest::Contains("tensor 'i64': value 1099511627776 out"),
                         io_error);
  }
  SUBCASE("unsupported") {
    CHECK_THROWS_WITH_AS(file.read<float>("i64"), doctest::Contains("cannot read tensor 'i64' of dtype I64 as F32"),
                         io_error);
    CHECK_THROWS_WITH_AS(file.read<std::int64_t>("f32"), doctest::Contains("tensor 'f32' of dtype F32 as I64"),
                         io_error);
    CHECK_THROWS_WITH_AS(file.read<double>("i8"), doctest::Contains("tensor 'i8' of dtype I8 as F64"), io_error);
    CHECK_THROWS_WITH_AS(file.read<float>("nope"), "no tensor named 'nope' in <memory>", io_error);
  }
  SUBCASE("expected shape") {
    CHECK(file.read<float>("f32", {2}).size() == 2);
    CHECK_THROWS_WITH_AS(file.read<float>("f32", {1, 2}),
                         doctest::Contains("tensor 'f32' has shape [2], expected [1,2]"), shape_error);
  }
}

TEST_CASE("safetensors dtypes") {
  CHECK(dtype_size(dtype::BF16) == 2);
  CHECK(dtype_size(dtype::I64) == 8);
  CHECK(dtype_size(dtype::BOOL) == 1);
  CHECK(std::string(dtype_name(dtype::F32)) == "F32");
  CHECK(parse_dtype("BOOL") == dtype::BOOL);
  CHECK(parse_dtype("BF16") == dtype::BF16);
  CHECK_THROWS_WITH_AS(parse_dtype("F8_E4M3"), doctest::Contains("'F8_E4M3'"), io_error);
}

TEST_CASE("safetensors parsing accepts") {
  SUBCASE("a header padded with spaces, unaligned data, and zero-size tensors anywhere") {
    const std::string header = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                               R"("z":{"dtype":"F16","shape":[0],"data_offsets":[4,4]},)"
                               R"("s":{"dtype":"I8","shape":[],"data_offsets":[8,9]}}     )";
    auto bytes = raw_file(header, 9);
    const float two[2] = {3.0f, -4.0f};
    std::memcpy(bytes.data() + 8 + header.size(), two, sizeof two);
    bytes.back() = std::byte{0x7f};
    const auto file = safetensors_file::from_bytes(std::move(bytes));
    CHECK(file.read<float>("a") == std::vector<float>{3.0f, -4.0f});
    CHECK(file.read<float>("z").empty());
    CHECK(file.at("s").numel() == 1);
    CHECK(std::to_integer<int>(file.at("s").data[0]) == 0x7f);
  }
  SUBCASE("an empty header object") { CHECK(safetensors_file::from_bytes(raw_file("{}")).names().empty()); }
}

TEST_CASE("safetensors parsing rejects") {
  SUBCASE("a short file") {
    check_rejects({}, "<memory>: file too short (0 bytes; the header length alone takes 8)");
    check_rejects(std::vector<std::byte>(7), "<memory>: file too short (7 bytes");
  }
  SUBCASE("a header past the end of the file") {
    auto bytes = raw_file("{}");
    bytes[0] = std::byte{3};
    check_rejects(bytes, "<memory>: header length 3 runs past the end of the file (10 bytes)");
    std::fill(bytes.begin(), bytes.begin() + 8, std::byte{0xff});
    check_rejects(bytes, "header length 18446744073709551615 runs past the end");
  }
  SUBCASE("a header that is not a JSON object") {
    check_rejects(raw_file(""), "<memory>: header is not valid JSON");
    check_rejects(raw_file("{\"a\":"), "header is not valid JSON");
    check_rejects(raw_file("{}\x01"), "header is not valid JSON");
    check_rejects(raw_file("[1,2]"), "<memory>: header is not a JSON object");
  }
  SUBCASE("an ill-formed entry") {
    check_rejects(raw_file(R"({"w":5})"), "<memory>: tensor 'w': entry is not an object");
    check_rejects(tensor_w(R"("shape":[2],"data_offsets":[0,8])"), "tensor 'w': missing or non-string \"dtype\"");
    check_rejects(tensor_w(R"("dtype":4,"shape":[2],"data_offsets":[0,8])"), "tensor 'w': missing or non-string");
    check_rejects(tensor_w(R"("dtype":"F8","shape":[2],"data_offsets":[0,8])"), "tensor 'w': unknown dtype 'F8'");
    check_rejects(tensor_w(R"("dtype":"F32","data_offsets":[0,8])"), "tensor 'w': missing or non-array \"shape\"");
    check_rejects(tensor_w(R"("dtype":"F32","shape":2,"data_offsets":[0,8])"), "tensor 'w': missing or non-array");
    const std::string bad_extent = "tensor 'w': \"shape\" entries must be integers in [0, 2^63)";
    check_rejects(tensor_w(R"("dtype":"F32","shape":[-2],"data_offsets":[0,8])"), bad_extent);
    check_rejects(tensor_w(R"("dtype":"F32","shape":[2.0],"data_offsets":[0,8])"), bad_extent);
    check_rejects(tensor_w(R"("dtype":"F32","shape":[9223372036854775808],"data_offsets":[0,8])"), bad_extent);
  }
  SUBCASE("an element count that overflows") {
    check_rejects(tensor_w(R"("dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8])"),
                  "tensor 'w': shape [4294967296,4294967296] has too many elements");
    check_rejects(tensor_w(R"("dtype":"F64","shape":[2305843009213693952],"data_offsets":[0,8])"),
                  "tensor 'w': shape [2305843009213693952] has too many elements");
  }
  SUBCASE("bad data_offsets") {
    const std::string not_pair = "tensor 'w': missing \"data_offsets\" or not [begin, end]";
    check_rejects(tensor_w(R"("dtype":"F32","shape":[2])"), not_pair);
    check_rejects(tensor_w(R"("dtype":"F32","shape":[2],"data_offsets":[0])"), not_pair);
    check_rejects(tensor_w(R"("dtype":"F32","shape":[2],"data_offsets":{"a":0,"b":8})"), not_pair);
    const std::string bad_offset = "tensor 'w': \"data_offsets\" must be integers in [0, 2^63)";
    check_rejects(tensor_w(R"("dtype":"F32","shape":[2],"data_offsets":[-1,7])"), bad_offset);
    check_rejects(tensor_w(R"("dtype":"F32","shape":[2],"data_offsets":["0",8])"), bad_offset);
    check_rejects(tensor_w(R"("dtype":"F32","shape":[2],"data_offsets":[0,18446744073709551615])"), bad_offset);
    check_rejects(tensor_w(R"("dtype":"F32","shape":[2],"data_offsets":[8,0])"),
                  "tensor 'w': data_offsets [8,0] have begin > end");
    check_rejects(tensor_w(R"("dtype":"F32","shape":[4],"data_offsets":[0,16])"),
                  "tensor 'w': data_offsets end 16 out of range (the data buffer has 8 bytes)");
    check_rejects(tensor_w(R"("dtype":"F32","shape":[2],"data_offsets":[0,6])"),
                  "tensor 'w': data_offsets span 6 bytes but F32 [2] needs 8");
  }
  SUBCASE("overlapping tensors") {
    check_rejects(raw_file(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[4,12]},)"
                           R"("b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
                           12),
                  "<memory>: tensors 'b' and 'a' overlap in the data buffer");
    check_rejects(raw_file(R"({"a":{"dtype":"I8","shape":[8],"data_offsets":[0,8]},)"
                           R"("b":{"dtype":"I8","shape":[1],"data_offsets":[3,4]}})",
                           8),
                  "tensors 'a' and 'b' overlap");
  }
  SUBCASE("a name given twice") {
    check_rejects(raw_file(R"({"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},)"
                           R"("a":{"dtype":"F32","shape":[1],"data_offsets":[4,8]}})",
                           8),
                  "<memory>: the header names 'a' more than once");
    check_rejects(raw_file(R"({"__metadata__":{"k":"v"},"__metadata__":{"k":"w"}})"),
                  "the header names '__metadata__' more than once");
  }
  SUBCASE("bad __metadata__") {
    check_rejects(raw_file(R"({"__metadata__":["a"]})"), "<memory>: __metadata__ is not an object of strings");
    check_rejects(raw_file(R"({"__metadata__":{"k":"v","n":1}})"), "<memory>: __metadata__ entry 'n' is not a string");
  }
}

TEST_CASE("safetensors open errors name the path") {
  const temp_path tmp;
  SUBCASE("missing") {
    CHECK_THROWS_WITH_AS(safetensors_file::open(tmp.str()), contains(tmp.str() + ": cannot open: "), io_error);
  }
  SUBCASE("empty") {
    std::ofstream(tmp.path).close();
    CHECK_THROWS_WITH_AS(safetensors_file::open(tmp.str()), contains(tmp.str() + ": file too short (0 bytes"),
                         io_error);
  }
  SUBCASE("malformed") {
    std::ofstream(tmp.path, std::ios::binary) << std::string("\x02\0\0\0\0\0\0\0[]", 10);
    CHECK_THROWS_WITH_AS(safetensors_file::open(tmp.str()), contains(tmp.str() + ": header is not a JSON object"),
                         io_error);
  }
  SUBCASE("a directory") {
    std::filesystem::create_directory(tmp.path);
    CHECK_THROWS_WITH_AS(safetensors_file::open(tmp.str()), doctest::Contains("not a regular file"), io_error);
    safetensors_writer writer;
    CHECK_THROWS_WITH_AS(writer.write(tmp.str()), contains(tmp.str() + ": cannot write: "), io_error);
  }
}

TEST_CASE("safetensors writer rejects") {
  safetensors_writer writer;
  const float values[2] = {1.0f, 2.0f};
  writer.add("w", {2}, values);
  CHECK_THROWS_WITH_AS(writer.add("w", {2}, values), doctest::Contains("'w'"), io_error);
  CHECK_THROWS_WITH_AS(writer.add("__metadata__", {2}, values), doctest::Contains("'__metadata__'"), io_error);
  CHECK_THROWS_WITH_AS(writer.add("x", dtype::F32, {3}, values, 8),
                       doctest::Contains("tensor 'x': 8 bytes given but F32 [3] needs 12"), io_error);
  CHECK_THROWS_WITH_AS(writer.add("x", {-2}, values), doctest::Contains("tensor 'x': invalid shape [-2]"), io_error);
  CHECK(safetensors_file::from_bytes(writer.to_bytes()).names() == std::vector<std::string>{"w"});
  writer.add("bad utf-8 \xff", {1}, values);
  CHECK_THROWS_WITH_AS(writer.to_bytes(), doctest::Contains("safetensors_writer: cannot encode the header"), io_error);
}

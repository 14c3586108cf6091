// Reads (memory-mapped, validated) and writes safetensors files: 8-byte header length, JSON header, raw data.
#pragma once

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <Eigen/Core>
#include <algorithm>
#include <cerrno>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <iterator>
#include <limits>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "metastate/core/error.hpp"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "metastate/io/safetensors.hpp assumes a little-endian host (safetensors data is little-endian)"
#endif

namespace metastate::io {

/// The element types of the safetensors format.
enum class dtype { F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL };

namespace detail {

struct dtype_entry {
  const char* name;
  std::size_t size;
};
// In the order of `dtype`.
inline constexpr dtype_entry dtype_table[] = {{"F64", 8}, {"F32", 4}, {"F16", 2}, {"BF16", 2}, {"I64", 8},
                                              {"I32", 4}, {"I16", 2}, {"I8", 1},  {"U8", 1},   {"BOOL", 1}};

/// The dtype a C++ element type is stored as.
template <class T>
struct dtype_of {
  static_assert(sizeof(T) == 0, "UNSUPPORTED_ELEMENT_TYPE__USE_FLOAT_DOUBLE_HALF_BFLOAT16_INT64_OR_INT32");
};
template <>
struct dtype_of<double> : std::integral_constant<dtype, dtype::F64> {};
template <>
struct dtype_of<float> : std::integral_constant<dtype, dtype::F32> {};
template <>
struct dtype_of<Eigen::half> : std::integral_constant<dtype, dtype::F16> {};
template <>
struct dtype_of<Eigen::bfloat16> : std::integral_constant<dtype, dtype::BF16> {};
template <>
struct dtype_of<std::int64_t> : std::integral_constant<dtype, dtype::I64> {};
template <>
struct dtype_of<std::int32_t> : std::integral_constant<dtype, dtype::I32> {};

inline std::optional<dtype> find_dtype(const std::string& name) {
  for (std::size_t i = 0; i < std::size(dtype_table); ++i)
    if (name == dtype_table[i].name) return static_cast<dtype>(i);
  return std::nullopt;
}

/// The byte size of a `shape` tensor of `type`; nullopt for a negative extent or a count over INT64_MAX.
inline std::optional<std::uint64_t> byte_count(const std::vector<std::int64_t>& shape, dtype type) {
  constexpr auto limit = static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max());
  const std::uint64_t size = dtype_table[static_cast<int>(type)].size;
  std::uint64_t count = 1;
  for (const std::int64_t extent : shape) {
    const auto e = static_cast<std::uint64_t>(extent);
    if (extent < 0 || (e != 0 && count > limit / e)) return std::nullopt;
    count *= e;
  }
  if (count > limit / size) return std::nullopt;
  return count * size;
}

/// A JSON number that is a non-negative integer no larger than INT64_MAX, or nullopt.
inline std::optional<std::uint64_t> as_offset(const nlohmann::json& value) {
  if (!value.is_number_unsigned()) return std::nullopt;
  const auto v = value.get<std::uint64_t>();
  if (v > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) return std::nullopt;
  return v;
}

/// Unmaps a read-only file mapping.
struct unmapper {
  std::size_t length = 0;
  void operator()(std::byte* p) const noexcept { ::munmap(p, length); }
};

}  // namespace detail

/// Bytes per element of `type`.
inline std::size_t dtype_size(dtype type) { return detail::dtype_table[static_cast<int>(type)].size; }

/// The format's name of `type`, e.g. "F32".
inline const char* dtype_name(dtype type) { return detail::dtype_table[static_cast<int>(type)].name; }

/// The dtype named `name` ("F32"); throws io_error naming an unknown dtype.
inline dtype parse_dtype(const std::string& name) {
  if (auto type = detail::find_dtype(name)) return *type;
  throw io_error("unknown safetensors dtype '" + name + "'");
}

/// One tensor of a safetensors file: its bytes stay owned by the file.
struct tensor_info {
  std::string name;
  dtype type;
  std::vector<std::int64_t> shape;
  const std::byte* data;  ///< Little-endian, possibly unaligned.
  std::size_t nbytes;
  /// The element count (1 for a scalar).
  std::int64_t numel() const {
    std::int64_t count = 1;
    for (const std::int64_t extent : shape) count *= extent;
    return count;
  }
};

/// A read-only, validated safetensors file (memory-mapped or held in memory); move-only.
class safetensors_file {
 public:
  /// Maps `path` read-only and validates it; throws io_error with the path and reason.
  static safetensors_file open(const std::string& path);
  /// Takes `bytes` as the file's contents and validates them (source "<memory>").
  static safetensors_file from_bytes(std::vector<std::byte> bytes);

  safetensors_file(safetensors_file&&) noexcept = default;
  safetensors_file& operator=(safetensors_file&&) noexcept = default;
  safetensors_file(const safetensors_file&) = delete;
  safetensors_file& operator=(const safetensors_file&) = delete;
  ~safetensors_file() = default;

  /// The tensor `name`, or nullptr if absent.
  const tensor_info* find(const std::string& name) const {
    const auto it = tensors_.find(name);
    return it == tensors_.end() ? nullptr : &it->second;
  }
  /// The tensor `name`; throws io_error if absent.
  const tensor_info& at(const std::string& name) const {
    if (const tensor_info* info = find(name)) return *info;
    throw io_error("no tensor named '" + name + "' in " + source_);
  }
  /// The tensor names, sorted.
  std::vector<std::string> names() const {
    std::vector<std::string> out;
    for (const auto& [name, info] : tensors_) out.push_back(name);
    return out;
  }
  /// The "__metadata__" strings (empty if the file has none).
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  /// The path the file was opened from, or "<memory>".
  const std::string& source() const { return source_; }

  /// A copy of tensor `name` converted to T: floating T from F64/F32/F16/BF16, integer T from I64/I32;
  /// throws io_error for another conversion or an integer out of T's range.
  template <class T>
  std::vector<T> read(const std::string& name) const;
  /// As read(name), after checking the tensor's shape is `expected_shape` (else throws shape_error).
  template <class T>
  std::vector<T> read(const std::string& name, const std::vector<std::int64_t>& expected_shape) const {
    expect_shape(source_.c_str(), name, at(name).shape, expected_shape);
    return read<T>(name);
  }

 private:
  explicit safetensors_file(std::string source) : source_(std::move(source)) {}
  [[noreturn]] void fail(const std::string& what) const { throw io_error(source_ + ": " + what); }
  void parse(const std::byte* bytes, std::size_t size);
  template <class Src, class T>
  std::vector<T> convert(const tensor_info& info) const;

  std::string source_;
  std::unique_ptr<std::byte, detail::unmapper> mapping_;
  std::vector<std::byte> owned_;
  std::map<std::string, tensor_info> tensors_;
  std::map<std::string, std::string> metadata_;
};

inline safetensors_file safetensors_file::open(const std::string& path) {
  safetensors_file file(path);
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) file.fail(std::string("cannot open: ") + std::strerror(errno));
  struct stat st {};
  std::string error;
  if (::fstat(fd, &st) != 0) {
    error = std::string("cannot stat: ") + std::strerror(errno);
  } else if (!S_ISREG(st.st_mode)) {
    error = "not a regular file";
  } else if (st.st_size > 0) {  // mmap of length 0 fails; parse() reports the empty file as too short
    void* map = ::mmap(nullptr, static_cast<std::size_t>(st.st_size), PROT_READ, MAP_PRIVATE, fd, 0);
    if (map == MAP_FAILED)
      error = std::string("cannot map: ") + std::strerror(errno);
    else
      file.mapping_ = {static_cast<std::byte*>(map), detail::unmapper{static_cast<std::size_t>(st.st_size)}};
  }
  ::close(fd);
  if (!error.empty()) file.fail(error);
  file.parse(file.mapping_.get(), static_cast<std::size_t>(st.st_size));
  return file;
}

inline safetensors_file safetensors_file::from_bytes(std::vector<std::byte> bytes) {
  safetensors_file file("<memory>");
  file.owned_ = std::move(bytes);
  file.parse(file.owned_.data(), file.owned_.size());
  return file;
}

inline void safetensors_file::parse(const std::byte* bytes, std::size_t size) {
  if (size < 8) fail("file too short (" + std::to_string(size) + " bytes; the header length alone takes 8)");
  std::uint64_t header_size = 0;
  for (int i = 7; i >= 0; --i) header_size = header_size << 8 | std::to_integer<std::uint64_t>(bytes[i]);
  if (header_size > size - 8)
    fail("header length " + std::to_string(header_size) + " runs past the end of the file (" + std::to_string(size) +
         " bytes)");
  const std::byte* data = bytes + 8 + header_size;
  const std::uint64_t data_size = size - 8 - header_size;

  nlohmann::json header;
  // A name given twice would keep only its last entry, the other's bytes silently unread.
  std::set<std::string> top_level_keys;
  std::optional<std::string> repeated;
  const auto note_repeats = [&](int depth, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
    if (event == nlohmann::json::parse_event_t::key && depth == 1 && !repeated &&
        !top_level_keys.insert(parsed.get<std::string>()).second)
      repeated = parsed.get<std::string>();
    return true;
  };
  try {
    const auto* text = reinterpret_cast<const char*>(bytes + 8);
    header = nlohmann::json::parse(text, text + header_size, note_repeats);
  } catch (const nlohmann::json::exception& e) {
    fail(std::string("header is not valid JSON: ") + e.what());
  }
  if (!header.is_object()) fail("header is not a JSON object");
  if (repeated) fail("the header names '" + *repeated + "' more than once");

  struct range {
    std::uint64_t begin, end;
    const std::string* name;
  };
  std::vector<range> ranges;
  for (const auto& item : header.items()) {
    const std::string& name = item.key();
    const nlohmann::json& entry = item.value();
    if (name == "__metadata__") {
      if (!entry.is_object()) fail("__metadata__ is not an object of strings");
      for (const auto& [key, value] : entry.items()) {
        if (!value.is_string()) fail("__metadata__ entry '" + key + "' is not a string");
        metadata_[key] = value.get<std::string>();
      }
      continue;
    }
    const auto bad = [&](const std::string& what) { fail("tensor '" + name + "': " + what); };
    if (!entry.is_object()) bad("entry is not an object");

    const auto type_it = entry.find("dtype");
    if (type_it == entry.end() || !type_it->is_string()) bad("missing or non-string \"dtype\"");
    const auto type = detail::find_dtype(type_it->get<std::string>());
    if (!type) bad("unknown dtype '" + type_it->get<std::string>() + "'");

    const auto shape_it = entry.find("shape");
    if (shape_it == entry.end() || !shape_it->is_array()) bad("missing or non-array \"shape\"");
    std::vector<std::int64_t> shape;
    for (const auto& extent : *shape_it) {
      const auto e = detail::as_offset(extent);
      if (!e) bad("\"shape\" entries must be integers in [0, 2^63)");
      shape.push_back(static_cast<std::int64_t>(*e));
    }
    const auto nbytes = detail::byte_count(shape, *type);
    if (!nbytes) bad("shape " + shape_string(shape) + " has too many elements");

    const auto offsets_it = entry.find("data_offsets");
    if (offsets_it == entry.end() || !offsets_it->is_array() || offsets_it->size() != 2)
      bad("missing \"data_offsets\" or not [begin, end]");
    const auto begin = detail::as_offset((*offsets_it)[0]);
    const auto end = detail::as_offset((*offsets_it)[1]);
    if (!begin || !end) bad("\"data_offsets\" must be integers in [0, 2^63)");
    if (*begin > *end)
      bad("data_offsets [" + std::to_string(*begin) + "," + std::to_string(*end) + "] have begin > end");
    if (*end > data_size)
      bad("data_offsets end " + std::to_string(*end) + " out of range (the data buffer has " +
          std::to_string(data_size) + " bytes)");
    if (*end - *begin != *nbytes)
      bad("data_offsets span " + std::to_string(*end - *begin) + " bytes but " + dtype_name(*type) + " " +
          shape_string(shape) + " needs " + std::to_string(*nbytes));

    const auto& info = tensors_[name] =
        tensor_info{name, *type, std::move(shape), data + *begin, static_cast<std::size_t>(*nbytes)};
    if (*nbytes != 0) ranges.push_back({*begin, *end, &info.name});
  }

  std::sort(ranges.begin(), ranges.end(), [](const range& a, const range& b) { return a.begin < b.begin; });
  for (std::size_t i = 1; i < ranges.size(); ++i)
    if (ranges[i].begin < ranges[i - 1].end)
      fail("tensors '" + *ranges[i - 1].name + "' and '" + *ranges[i].name + "' overlap in the data buffer");
}

template <class Src, class T>
std::vector<T> safetensors_file::convert(const tensor_info& info) const {
  std::vector<T> out(static_cast<std::size_t>(info.numel()));
  if constexpr (std::is_same_v<Src, T>) {
    if (!out.empty()) std::memcpy(out.data(), info.data, info.nbytes);
  } else {
    for (std::size_t i = 0; i < out.size(); ++i) {
      Src value;
      std::memcpy(static_cast<void*>(&value), info.data + i * sizeof(Src), sizeof(Src));
      if constexpr (std::is_integral_v<T>) {
        if (value < std::numeric_limits<T>::min() || value > std::numeric_limits<T>::max())
          fail("tensor '" + info.name + "': value " + std::to_string(value) + " out of range for " +
               dtype_name(detail::dtype_of<T>::value));
        out[i] = static_cast<T>(value);
      } else {
        using wide = std::conditional_t<std::is_same_v<Src, double>, double, float>;
        out[i] = static_cast<T>(static_cast<wide>(value));
      }
    }
  }
  return out;
}

template <class T>
std::vector<T> safetensors_file::read(const std::string& name) const {
  const tensor_info& info = at(name);
  if constexpr (std::is_integral_v<T>) {
    if (info.type == dtype::I64) return convert<std::int64_t, T>(info);
    if (info.type == dtype::I32) return convert<std::int32_t, T>(info);
  } else {
    if (info.type == dtype::F64) return convert<double, T>(info);
    if (info.type == dtype::F32) return convert<float, T>(info);
    if (info.type == dtype::F16) return convert<Eigen::half, T>(info);
    if (info.type == dtype::BF16) return convert<Eigen::bfloat16, T>(info);
  }
  fail("cannot read tensor '" + name + "' of dtype " + dtype_name(info.type) + " as " +
       dtype_name(detail::dtype_of<T>::value));
}

/// Collects tensors and metadata, then writes them as one safetensors file.
class safetensors_writer {
 public:
  /// Adds a copy of `nbytes` bytes at `data` as tensor `name`; throws io_error on a duplicate (or reserved)
  /// name, a negative or overflowing shape, or `nbytes` other than numel * dtype_size(type).
  void add(const std::string& name, dtype type, std::vector<std::int64_t> shape, const void* data, std::size_t nbytes) {
    if (name == "__metadata__" || tensors_.count(name) != 0)
      throw io_error("safetensors_writer: duplicate or reserved tensor name '" + name + "'");
    const auto needed = detail::byte_count(shape, type);
    if (!needed) throw io_error("safetensors_writer: tensor '" + name + "': invalid shape " + shape_string(shape));
    if (*needed != nbytes)
      throw io_error("safetensors_writer: tensor '" + name + "': " + std::to_string(nbytes) + " bytes given but " +
                     dtype_name(type) + " " + shape_string(shape) + " needs " + std::to_string(*needed));
    const auto* bytes = static_cast<const std::byte*>(data);
    entry& e = tensors_[name];
    e.type = type;
    e.shape = std::move(shape);
    if (nbytes != 0) e.bytes.assign(bytes, bytes + nbytes);
  }
  /// Adds a copy of the numel(shape) values at `data` with T's dtype (float -> F32, Eigen::half -> F16, ...).
  template <class T>
  void add(const std::string& name, std::vector<std::int64_t> shape, const T* data) {
    const auto nbytes = detail::byte_count(shape, detail::dtype_of<T>::value);
    add(name, detail::dtype_of<T>::value, std::move(shape), data, nbytes ? static_cast<std::size_t>(*nbytes) : 0);
  }
  /// Sets the "__metadata__" string `key` to `value`.
  void set_metadata(const std::string& key, const std::string& value) { metadata_[key] = value; }

  /// Writes the file to `path`; throws io_error with the path and reason.
  void write(const std::string& path) const {
    const std::vector<std::byte> head = prefix();
    std::FILE* out = std::fopen(path.c_str(), "wb");
    if (!out) throw io_error(path + ": cannot write: " + std::strerror(errno));
    bool ok = std::fwrite(head.data(), 1, head.size(), out) == head.size();
    for (const auto& [name, e] : tensors_)
      ok = ok && (e.bytes.empty() || std::fwrite(e.bytes.data(), 1, e.bytes.size(), out) == e.bytes.size());
    const int saved = errno;
    if (std::fclose(out) != 0 || !ok) throw io_error(path + ": cannot write: " + std::strerror(ok ? errno : saved));
  }
  /// The file's bytes.
  std::vector<std::byte> to_bytes() const {
    std::vector<std::byte> bytes = prefix();
    for (const auto& [name, e] : tensors_) bytes.insert(bytes.end(), e.bytes.begin(), e.bytes.end());
    return bytes;
  }

 private:
  struct entry {
    dtype type;
    std::vector<std::int64_t> shape;
    std::vector<std::byte> bytes;
  };

  /// The header length and the JSON header, padded with spaces so that the data starts 8-byte aligned;
  /// the tensors are laid out in name order.
  std::vector<std::byte> prefix() const {
    nlohmann::json header = nlohmann::json::object();
    if (!metadata_.empty()) header["__metadata__"] = metadata_;
    std::size_t offset = 0;
    for (const auto& [name, e] : tensors_) {
      header[name] = {
          {"dtype", dtype_name(e.type)}, {"shape", e.shape}, {"data_offsets", {offset, offset + e.bytes.size()}}};
      offset += e.bytes.size();
    }
    std::string text;
    try {
      text = header.dump();
    } catch (const nlohmann::json::exception& e) {
      throw io_error(std::string("safetensors_writer: cannot encode the header: ") + e.what());
    }
    text.resize((text.size() + 7) / 8 * 8, ' ');
    std::vector<std::byte> bytes(8 + text.size());
    for (int i = 0; i < 8; ++i) bytes[i] = static_cast<std::byte>(static_cast<std::uint64_t>(text.size()) >> (8 * i));
    std::memcpy(bytes.data() + 8, text.data(), text.size());
    return bytes;
  }

  std::map<std::string, entry> tensors_;
  std::map<std::string, std::string> metadata_;
};

}  // namespace metastate::io

#pragma once
/// \file
/// safetensors I/O: a memory-mapped, validated reader and a writer.
///
/// A safetensors file is an 8-byte little-endian header length N, N bytes of JSON
/// ({"key": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, "__metadata__": {..}})
/// and the raw data, row-major, little-endian. The file has no Dims, only shapes: loading maps
/// the file's axes onto Dims given in the file's order (PyTorch's layout, e.g. `[out, in]` for a
/// Linear weight). Every malformed file, and every mismatch, throws dimx::Error naming the file,
/// the key and the problem. See docs/io.md.
#include <dimx/dim.h>
#include <dimx/dtype.h>
#include <dimx/tensor.h>

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace dimx {

/// One entry of a safetensors header.
struct TensorInfo {
  std::string dtype;           ///< as in the file: "F32", "F64", "F16", "BF16", "I64", "BOOL", ...
  std::vector<int64_t> shape;  ///< row-major; {} for a scalar
  uint64_t begin = 0;          ///< byte range [begin, end) within the data section
  uint64_t end = 0;            ///< one past the last byte (see begin)
};

/// A JSON value from a file's metadata, parsed by dimx (no JSON library needed by the caller).
/// Accessors of the wrong kind, and missing members or indices, throw dimx::Error naming what
/// was asked and what the value is.
class MetaValue {
 public:
  /// The JSON kinds (every JSON number is a `number`, held as a double).
  enum class Kind { null, boolean, number, string, array, object };
  MetaValue() = default;                                          ///< a null value
  Kind kind() const { return kind_; }                             ///< which JSON kind this value is
  bool is_null() const { return kind_ == Kind::null; }            ///< kind() == Kind::null
  bool as_bool() const;                                           ///< a boolean
  double as_double() const;                                       ///< a number
  int64_t as_int() const;                                         ///< a number with an exact integer value
  const std::string& as_string() const;                           ///< a string
  const std::vector<MetaValue>& as_array() const;                 ///< an array's elements
  const std::map<std::string, MetaValue>& as_object() const;      ///< an object's members, by name
  bool contains(const std::string& member) const;                 ///< false for non-objects
  const MetaValue& operator[](const std::string& member) const;  ///< an object's member
  const MetaValue& operator[](size_t index) const;                ///< an array's element
  size_t size() const;       ///< elements of an array or members of an object; 0 otherwise
  std::string dump() const;  ///< compact JSON

  /// Parses `text`; `what` names it in the error for text that is not JSON.
  static MetaValue parse(const std::string& text, const std::string& what);

 private:
  Kind kind_ = Kind::null;
  bool bool_ = false;
  double number_ = 0;
  std::string string_;
  std::vector<MetaValue> array_;
  std::map<std::string, MetaValue> object_;
  friend struct MetaValueBuilder;
};

/// An open safetensors file: mapped read-only and validated in full by open(), so later calls
/// fail only on mismatches with what the caller asks for. Copies share the mapping, which is
/// released with the last copy. Loaded tensors are copies and never refer to the mapping.
class SafeTensors {
 public:
  /// Throws dimx::Error naming `path` and the problem: missing or unreadable file, file shorter
  /// than 8 bytes, header length beyond the file or over 100 MB, header not JSON or not an
  /// object, duplicate keys, unknown dtype, bad shape, data_offsets out of the data section,
  /// of the wrong size for shape and dtype, or overlapping another tensor.
  static SafeTensors open(const std::string& path);

  const std::string& path() const;        ///< the path given to open()
  std::vector<std::string> keys() const;  ///< sorted; "__metadata__" is not a key
  bool contains(const std::string& key) const;  ///< whether the file has a tensor `key`
  size_t size() const;                    ///< number of tensors
  /// The header entry of `key`; throws dimx::Error for a key the file lacks.
  TensorInfo info(const std::string& key) const;
  /// "__metadata__": string values (the format's rule). metadata(key) is one of them, or
  /// nullopt; metadata_json(key) parses it as JSON (a config stored as a JSON string), and
  /// throws dimx::Error naming the file and the key if it is absent or not JSON.
  const std::map<std::string, std::string>& metadata() const;
  std::optional<std::string> metadata(const std::string& key) const;  ///< one entry, or nullopt
  MetaValue metadata_json(const std::string& key) const;  ///< one entry parsed as JSON

  /// Loads `key` as a CPU tensor over `dims`: the file's shape (row-major) must equal the Dims'
  /// extents in this order. `dtype` defaults to the file's natural dtype (F64 -> f64;
  /// F32/F16/BF16/F8_* -> f32; I64/U32/U64 -> i64; I32/I16/I8/U16/U8 -> i32; BOOL -> bool).
  /// Floating file dtypes load as f32 or f64, integer ones as i32 or i64 (values out of range
  /// are an error), BOOL as bool; other combinations are an error (use astype afterwards).
  Tensor load(const std::string& key, const Dims& dims, std::optional<DType> dtype = std::nullopt) const;
  /// Loads with fresh static Dims named "dim0", "dim1", ... (for inspection).
  Tensor load(const std::string& key) const;
  /// Padded data: loads `key` over `dims` (static, in the file's order), then for each pair
  /// (file Dim, dynamic Dim) in `padded` keeps the first extent-of-the-dynamic-Dim frames of
  /// the file Dim and makes it the dynamic Dim (its lengths' Dims must be among `dims`). The
  /// file Dim's extent must be at least the dynamic Dim's; frames past each sequence's length
  /// become padding.
  Tensor load(const std::string& key, const Dims& dims, const std::vector<std::pair<Dim, Dim>>& padded,
              std::optional<DType> dtype = std::nullopt) const;

  struct Impl;

 private:
  std::shared_ptr<const Impl> impl_;
};

/// Writes `tensors` (each exported row-major in its current Dim order, as F32, F64, I32, I64 or
/// BOOL after its dtype) and `metadata` as "__metadata__". Keys must be unique, non-empty and
/// not "__metadata__". The file is written to a temporary name next to `path` and renamed, so
/// a failed save never leaves a truncated file at `path`.
void save_safetensors(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

/// ---- loading into existing tensors (module parameters)

/// A destination for one file entry.
struct LoadBinding {
  std::string key;  ///< name in the file
  Tensor target;    ///< overwritten in place (copy_from), cast to its dtype; keeps identity and grad
  Dims file_order;  ///< target's Dims in the file's row-major order; empty: target.dims()
};

/// The outcome of a load, key by key.
struct LoadReport {
  std::vector<std::string> loaded;      ///< keys copied into their targets
  std::vector<std::string> missing;     ///< bound keys the file lacks
  std::vector<std::string> unexpected;  ///< file keys no binding names
  std::vector<std::string> mismatched;  ///< "key: file F32[3, 4] vs {out:4, in:3} (f32)" (not loaded)
};

/// What makes a load fail (one dimx::Error naming every problem; no target is modified):
///   exact:  a missing, mis-shaped or unexpected key (unexpected: a file key in scope that no
///           binding names);
///   module: a missing or mis-shaped key; unexpected ones are only reported (the file holds
///           more than the module, such as optimizer state or other layers);
///   none:   nothing; the entries that fit are loaded and the rest reported.
enum class Strictness { exact, module, none };

/// How load_into() treats problems.
struct LoadOptions {
  Strictness strict = Strictness::exact;  ///< which problems make the load fail
  /// Only file keys starting with `scope` count as unexpected ("" = every key).
  std::string scope;
};

/// Copies every bound entry of `file` into its target, as `options` says.
LoadReport load_into(const SafeTensors& file, const std::vector<LoadBinding>& bindings, const LoadOptions& options);
/// strict: Strictness::exact over the whole file; not strict: Strictness::none.
LoadReport load_into(const SafeTensors& file, const std::vector<LoadBinding>& bindings, bool strict = true);

}  // namespace dimx

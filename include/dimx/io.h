#pragma once
// safetensors I/O: a memory-mapped, validated reader and a writer.
//
// A safetensors file is an 8-byte little-endian header length N, N bytes of JSON
// ({"key": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, "__metadata__": {..}})
// and the raw data, row-major, little-endian. The file has no Dims, only shapes: loading maps
// the file's axes onto Dims given in the file's order (PyTorch's layout, e.g. `[out, in]` for a
// Linear weight). Every malformed file, and every mismatch, throws dimx::Error naming the file,
// the key and the problem. See docs/io.md.
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

// One entry of a safetensors header.
struct TensorInfo {
  std::string dtype;           // as in the file: "F32", "F64", "F16", "BF16", "I64", "BOOL", ...
  std::vector<int64_t> shape;  // row-major; {} for a scalar
  uint64_t begin = 0;          // byte range [begin, end) within the data section
  uint64_t end = 0;
};

// An open safetensors file: mapped read-only and validated in full by open(), so later calls
// fail only on mismatches with what the caller asks for. Copies share the mapping, which is
// released with the last copy. Loaded tensors are copies and never refer to the mapping.
class SafeTensors {
 public:
  // Throws dimx::Error naming `path` and the problem: missing or unreadable file, file shorter
  // than 8 bytes, header length beyond the file or over 100 MB, header not JSON or not an
  // object, duplicate keys, unknown dtype, bad shape, data_offsets out of the data section,
  // of the wrong size for shape and dtype, or overlapping another tensor.
  static SafeTensors open(const std::string& path);

  const std::string& path() const;
  std::vector<std::string> keys() const;  // sorted; "__metadata__" is not a key
  bool contains(const std::string& key) const;
  size_t size() const;                    // number of tensors
  TensorInfo info(const std::string& key) const;
  const std::map<std::string, std::string>& metadata() const;

  // Loads `key` as a CPU tensor over `dims`: the file's shape (row-major) must equal the Dims'
  // extents in this order. `dtype` defaults to the file's natural dtype (F64 -> f64;
  // F32/F16/BF16/F8_* -> f32; I64/U32/U64 -> i64; I32/I16/I8/U16/U8 -> i32; BOOL -> bool).
  // Floating file dtypes load as f32 or f64, integer ones as i32 or i64 (values out of range
  // are an error), BOOL as bool; other combinations are an error (use astype afterwards).
  Tensor load(const std::string& key, const Dims& dims, std::optional<DType> dtype = std::nullopt) const;
  // Loads with fresh static Dims named "dim0", "dim1", ... (for inspection).
  Tensor load(const std::string& key) const;

  struct Impl;

 private:
  std::shared_ptr<const Impl> impl_;
};

// Writes `tensors` (each exported row-major in its current Dim order, as F32, F64, I32, I64 or
// BOOL after its dtype) and `metadata` as "__metadata__". Keys must be unique, non-empty and
// not "__metadata__". The file is written to a temporary name next to `path` and renamed, so
// a failed save never leaves a truncated file at `path`.
void save_safetensors(const std::string& path, const std::vector<std::pair<std::string, Tensor>>& tensors,
                      const std::map<std::string, std::string>& metadata = {});

// ---- loading into existing tensors (module parameters)

// A destination for one file entry.
struct LoadBinding {
  std::string key;  // name in the file
  Tensor target;    // overwritten in place (copy_from), cast to its dtype; keeps identity and grad
  Dims file_order;  // target's Dims in the file's row-major order; empty: target.dims()
};

struct LoadReport {
  std::vector<std::string> loaded;      // keys copied into their targets
  std::vector<std::string> missing;     // bound keys the file lacks
  std::vector<std::string> unexpected;  // file keys no binding names
  std::vector<std::string> mismatched;  // "key: file F32[3, 4] vs {out:4, in:3} (f32)" (not loaded)
};

// Copies every bound entry of `file` into its target. strict: any missing, unexpected or
// mismatched key throws one dimx::Error that names all of them, and no target is modified.
// Not strict: the entries that fit are loaded and the rest are reported.
LoadReport load_into(const SafeTensors& file, const std::vector<LoadBinding>& bindings, bool strict = true);

}  // namespace dimx

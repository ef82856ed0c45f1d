// Token embedding lookup and its scatter-add gradient.
#include <cstring>

#include "kernels/cpu/cpu_ops.h"
#include "kernels/cpu/cpu_util.h"

namespace llmft::cpu {
namespace {

// Checks every id before any row is touched, so a bad id leaves the output
// unchanged and the error names the first offending position.
void require_ids_in_range(std::string_view op, const int32_t* ids, int64_t count, int64_t vocab_size) {
  for (int64_t position = 0; position < count; ++position) {
    if (ids[position] < 0 || ids[position] >= vocab_size) {
      throw_bad_input(op, ": token id ", ids[position], " at position ", position, " is outside the vocabulary [0, ",
                      vocab_size, ")");
    }
  }
}

}  // namespace

void embedding_forward(Context& context, const Tensor& ids, const Tensor& table, Tensor& out) {
  constexpr std::string_view op = "embedding_forward";
  require_dtype(op, "ids", ids, DType::kI32);
  require_float(op, "table", table);
  require_float(op, "out", out);
  if (table.dim() != 2) throw_runtime(op, ": table must be [vocab, dim], found ", table.to_string());
  const int64_t vocab_size = table.size(0), dim = table.size(1);
  const int64_t count = ids.numel();
  require_last_dim(op, "out", out, dim);
  require_numel(op, "out", out, count * dim);
  const int32_t* id_data = ids.data<int32_t>();
  require_ids_in_range(op, id_data, count, vocab_size);

  const bool same_dtype = table.dtype() == out.dtype();
  const size_t row_bytes = static_cast<size_t>(dim) * dtype_size(table.dtype());
  const char* table_bytes = static_cast<const char*>(table.raw_data());
  char* out_bytes = static_cast<char*>(out.raw_data());
  FloatReader table_reader(table);
  FloatWriter out_writer(out);
  parallel_rows(count, dim, [&](int64_t position) {
    const int64_t id = id_data[position];
    if (same_dtype) {
      std::memcpy(out_bytes + position * row_bytes, table_bytes + id * row_bytes, row_bytes);
      return;
    }
    float scratch[kChunk];
    for (int64_t begin = 0; begin < dim; begin += kChunk) {
      const int64_t piece = std::min(kChunk, dim - begin);
      out_writer.write(position * dim + begin, piece, table_reader.read(id * dim + begin, piece, scratch));
    }
  });
}

void embedding_backward(Context& context, const Tensor& ids, const Tensor& dout, Tensor& dtable) {
  constexpr std::string_view op = "embedding_backward";
  require_dtype(op, "ids", ids, DType::kI32);
  require_float(op, "dout", dout);
  require_float(op, "dtable", dtable);
  if (dtable.dim() != 2) throw_runtime(op, ": dtable must be [vocab, dim], found ", dtable.to_string());
  const int64_t vocab_size = dtable.size(0), dim = dtable.size(1);
  const int64_t count = ids.numel();
  require_last_dim(op, "dout", dout, dim);
  require_numel(op, "dout", dout, count * dim);
  const int32_t* id_data = ids.data<int32_t>();
  require_ids_in_range(op, id_data, count, vocab_size);

  // Threads own disjoint column ranges and each walks all positions in order,
  // so repeated ids accumulate without races and in a fixed order.
  FloatReader dout_reader(dout);
  FloatWriter dtable_writer(dtable);
  constexpr int64_t kColumnBlock = 64;
  const int64_t blocks = ceil_div(dim, kColumnBlock);
#pragma omp parallel for schedule(static) if (count * dim > kParallelWork && blocks > 1)
  for (int64_t block = 0; block < blocks; ++block) {
    const int64_t begin = block * kColumnBlock;
    const int64_t width = std::min(kColumnBlock, dim - begin);
    float dout_scratch[kColumnBlock], dtable_scratch[kColumnBlock];
    for (int64_t position = 0; position < count; ++position) {
      const int64_t id = id_data[position];
      const float* gradient = dout_reader.read(position * dim + begin, width, dout_scratch);
      float* row = dtable_writer.open(id * dim + begin, width, dtable_scratch, /*load_current=*/true);
      for (int64_t j = 0; j < width; ++j) row[j] += gradient[j];
      dtable_writer.commit(id * dim + begin, width, row);
    }
  }
}

}  // namespace llmft::cpu

#include "data/packing.h"

#include <algorithm>
#include <cctype>
#include <numeric>
#include <set>

#include "core/error.h"

namespace llmft::data {

const char* long_documents_name(LongDocuments policy) {
  switch (policy) {
    case LongDocuments::kTruncate:
      return "truncate";
    case LongDocuments::kSplit:
      return "split";
    case LongDocuments::kDrop:
      return "drop";
  }
  return "?";
}

std::optional<LongDocuments> parse_long_documents(const std::string& name) {
  std::string lower = name;
  for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  for (LongDocuments policy : {LongDocuments::kTruncate, LongDocuments::kSplit, LongDocuments::kDrop})
    if (lower == long_documents_name(policy)) return policy;
  return std::nullopt;
}

std::vector<std::pair<int64_t, int64_t>> document_pieces(int64_t length, int64_t seq_len, LongDocuments policy) {
  std::vector<std::pair<int64_t, int64_t>> pieces;
  if (length <= 0) return pieces;
  if (length <= seq_len) {
    pieces.emplace_back(0, length);
    return pieces;
  }
  switch (policy) {
    case LongDocuments::kTruncate:
      pieces.emplace_back(0, seq_len);
      break;
    case LongDocuments::kSplit:
      for (int64_t begin = 0; begin < length; begin += seq_len) pieces.emplace_back(begin, std::min(length, begin + seq_len));
      break;
    case LongDocuments::kDrop:
      break;
  }
  return pieces;
}

std::vector<std::vector<size_t>> best_fit_decreasing(std::span<const int64_t> lengths, int64_t capacity) {
  std::vector<size_t> order(lengths.size());
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return lengths[a] > lengths[b]; });
  std::vector<std::vector<size_t>> rows;
  // Open rows by (free space, row index): lower_bound finds the tightest fit,
  // the earliest row among equals. A full row leaves the set.
  std::set<std::pair<int64_t, size_t>> open;
  for (size_t item : order) {
    const int64_t length = lengths[item];
    if (length < 1 || length > capacity)
      throw_runtime("best_fit_decreasing: item ", item, " has length ", length, ", outside [1, ", capacity, "]");
    auto fit = open.lower_bound({length, 0});
    size_t row;
    int64_t free_space;
    if (fit == open.end()) {
      row = rows.size();
      rows.emplace_back();
      free_space = capacity;
    } else {
      row = fit->second;
      free_space = fit->first;
      open.erase(fit);
    }
    rows[row].push_back(item);
    if (free_space - length > 0) open.insert({free_space - length, row});
  }
  return rows;
}

}  // namespace llmft::data

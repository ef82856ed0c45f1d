// Row layout of documents: which documents share a row, and what happens to a
// document longer than a row. Pure functions of token counts, so the loader
// (data/loader.h), its step-count arithmetic and `llmft data inspect` lay out
// rows by the same rules.
//
// Best-fit decreasing (BFD) packing as TRL's `pack_dataset(strategy="bfd")`
// and torchtune's `PackedDataset(split_across_pack=False)` do it, after Ding
// et al., "Fewer Truncations Improve Language Modeling" (ICML 2024): whole
// documents are placed into rows of `capacity` tokens, longest first, each in
// the open row whose free space fits it most tightly (a new row when none
// does); the rest of a row is padding. Concatenating documents and cutting the
// stream at every seq_len tokens (the pre-training layout) cuts almost every
// short document in two, and the second piece is trained without the context
// (a chat turn's question) that came before it.
#pragma once

#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace llmft::data {

// What the loader does with a document longer than seq_len (its tokens with
// the appended EOS, if any) in the PACKED (best-fit) and PADDED layouts.
enum class LongDocuments {
  kTruncate,  // keep its first seq_len tokens (TRL's and torchtune's default)
  kSplit,     // cut it into pieces of seq_len tokens, each its own segment (positions restart)
  kDrop,      // leave it out
};

// "truncate", "split", "drop" (lower case: the loader state and messages).
const char* long_documents_name(LongDocuments policy);
std::optional<LongDocuments> parse_long_documents(const std::string& name);  // any case

// The pieces [begin, end) of a document of `length` tokens under `policy`
// for rows of `seq_len` tokens: one piece [0, length) when it fits, none for
// an empty document.
std::vector<std::pair<int64_t, int64_t>> document_pieces(int64_t length, int64_t seq_len, LongDocuments policy);

// Best-fit decreasing: rows of the items `lengths` (each in [1, capacity]),
// each row the indices of its items in placement order. Items are placed in
// order of decreasing length (ties: lower index first); an item goes to the
// open row with the least free space that still holds it (ties: the earliest
// row), or starts a new row. Deterministic: the same lengths give the same
// rows on every rank and every run. O(n log n).
std::vector<std::vector<size_t>> best_fit_decreasing(std::span<const int64_t> lengths, int64_t capacity);

}  // namespace llmft::data

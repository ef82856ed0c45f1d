// JSON from users' files, parsed with a bound on nesting depth. nlohmann's
// parser itself keeps its stack on the heap, but copying, comparing and
// dumping a value recurse once per level, and so do llmft's own walkers over
// it (the chat template's inputs, tokenizer.json's model), so a line of
// `[[[[…` 100,000 levels deep, 200 kB of input, crashes the process with a
// stack overflow right after it parses. No real file comes near the bound:
// tokenizer.json, config.json and chat records nest fewer than ten levels, and
// Python's json module gives up near 1,000 (its recursion limit).
//
// Header-only: a target that includes it links nlohmann_json (core itself
// does not).
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <utility>

#include "core/error.h"

namespace llmft {

inline constexpr int kMaxJsonDepth = 512;

// A parser callback for `Json::parse(input, callback, allow_exceptions)` that
// stops the parse at the first array or object nested deeper than `max_depth`
// with kBadInput "<where>: JSON nested deeper than 512 levels of arrays and
// objects (...)". `where` names the file (and line); when empty the message
// starts with "JSON", for a caller that prefixes it.
template <typename Json>
typename Json::parser_callback_t json_depth_limit(std::string where, int max_depth = kMaxJsonDepth) {
  return [where = std::move(where), max_depth](int depth, typename Json::parse_event_t event, Json&) {
    // `depth` counts the arrays and objects already open around this one.
    if ((event == Json::parse_event_t::object_start || event == Json::parse_event_t::array_start) &&
        depth >= max_depth)
      throw_bad_input(where, where.empty() ? "" : ": ", "JSON nested deeper than ", max_depth,
                      " levels of arrays and objects (the bound llmft puts on input files)");
    return true;
  };
}

// Json::parse(input) with that bound. `allow_exceptions` is nlohmann's: when
// false a syntax error gives a discarded value instead of json::parse_error;
// the depth error is thrown either way.
template <typename Json = nlohmann::json, typename Input>
Json parse_json(Input&& input, std::string where, bool allow_exceptions = true, int max_depth = kMaxJsonDepth) {
  return Json::parse(std::forward<Input>(input), json_depth_limit<Json>(std::move(where), max_depth),
                     allow_exceptions);
}

// Json::dump() that cannot throw on bytes: a string built from a user's
// bytes (a token's text, a file name, an argument) need not be UTF-8, and
// nlohmann's dump() throws type_error 316 on an ill-formed sequence (found
// by fuzz/tokenizer_fuzz: a token that does not continue the text, whose
// bytes end mid-character, crashed the error message meant to report it).
// Ill-formed bytes become U+FFFD.
template <typename Json>
std::string dump_json(const Json& value) {
  return value.dump(-1, ' ', false, Json::error_handler_t::replace);
}

}  // namespace llmft

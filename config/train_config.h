// Loading a training configuration: proto/llmft.proto (TrainConfig) in
// Protobuf text format, `--set field.path=value` overrides, defaults, ranges.
//
// The .proto is the single source of truth for fields, defaults and ranges
// (STYLE.md 4); fill_train_config_defaults and validate_train_config implement
// what its comments say, and tests/launch/config_test.cc holds them to it.
//
// Every error is one llmft::Error (kBadInput) line naming the file (with line
// and column for parse errors) or the --set argument, the field path and what
// was expected:
//   run.pbtxt:7:3: unknown field 'optimiser' in llmft.TrainConfig (did you mean
//   'optimizer'?)
//   --set optimizer.lr=abc: field 'optimizer.lr' expects a number
//   run.pbtxt: field 'peft.lora.dropout': 1.5 out of range [0, 1)
#pragma once

#include <string>
#include <vector>

#include "proto/llmft.pb.h"

namespace llmft::config {

// The whole pipeline: read `path`, parse, apply `overrides` in order (each
// "field.path=value"), fill defaults, validate. Errors name `path` as given.
TrainConfig load_train_config(const std::string& path, const std::vector<std::string>& overrides = {});

// Parses text-format `text`; `source_name` prefixes errors ("run.pbtxt:3:5:
// ...").
TrainConfig parse_train_config(const std::string& text, const std::string& source_name);

// Applies one "field.path=value". Scalars are parsed by the field's type
// (numbers, true/false, enum value names case-insensitively); a repeated field
// takes a comma-separated list that replaces its contents ("" empties it);
// setting a field inside a oneof member (peft.lora.r) selects that member.
void apply_override(TrainConfig& config, const std::string& assignment);

// Sets every field the user left unset to the default its .proto comment
// states.
void fill_train_config_defaults(TrainConfig& config);

// Checks every range the .proto states; errors are "<source_name>: field 'x.y':
// ...".
void validate_train_config(const TrainConfig& config, const std::string& source_name);

// The resolved configuration in text format (what `llmft train --check`
// prints).
std::string train_config_to_text(const TrainConfig& config);

}  // namespace llmft::config

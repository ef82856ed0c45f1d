// Placeholder: implemented with the model library.
#include "core/error.h"
#include "launch/commands.h"

namespace llmft::launch {

int run_inspect(std::span<char*> args) { throw_runtime("inspect: not implemented yet"); }

}  // namespace llmft::launch

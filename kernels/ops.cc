// Placeholder until the CPU kernels land.
#include "kernels/ops.h"

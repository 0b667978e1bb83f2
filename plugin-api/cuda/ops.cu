// The one translation unit plugin-api/build.rs compiles to PTX (module "llmlab_ops") and the CPU tests
// compile with emulation.h: every kernel of the fused ops.
#include "norms.cu"
#include "softmax.cu"
#include "elementwise.cu"
#include "rope.cu"
#include "cross_entropy.cu"
#include "attention.cu"
#include "adamw.cu"

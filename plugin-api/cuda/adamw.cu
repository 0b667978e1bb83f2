// AdamW in one pass over parameter, gradient and both moments, all f32 (train/src/adamw.rs has
// the same update on the CPU): m, v updated in place, then p ← p·decay − step·m / (√v·c + ε).
#include "common.cuh"

extern "C" __global__ void adamw_step_f32(float* p, const float* g, float* m, float* v, long n,
                                          float beta1, float beta2, float eps, float decay,
                                          float step_size, float inv_sqrt_bc2, float grad_scale) {
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < n;
         i += (long)gridDim.x * blockDim.x) {
        const float gi = g[i] * grad_scale;
        const float mi = beta1 * m[i] + (1.0f - beta1) * gi;
        const float vi = beta2 * v[i] + (1.0f - beta2) * gi * gi;
        m[i] = mi;
        v[i] = vi;
        p[i] = p[i] * decay - step_size * mi / (sqrtf(vi) * inv_sqrt_bc2 + eps);
    }
}
LLMLAB_EXPORT(adamw_step_f32)

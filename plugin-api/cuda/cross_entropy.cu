// Next-token NLL fused with its log-softmax (nn/src/ops/cross_entropy.rs), one block per row.
// The forward keeps each row's log-sum-exp (f32) for the backward. A target outside the
// vocabulary makes that position's NLL NaN (the CPU path names it; checking here would cost a
// device-to-host copy per step).
#include "common.cuh"

template <typename T>
__device__ void nll_forward(const T* x, const uint32_t* targets, float* lse, float* nll, int v) {
    __shared__ float scratch[32];
    const long row = blockIdx.x;
    x += row * v;
    float m = -INFINITY;
    for (int i = threadIdx.x; i < v; i += blockDim.x) m = fmaxf(m, to_f32(x[i]));
    m = block_max(m, scratch);
    float s = 0.0f;
    for (int i = threadIdx.x; i < v; i += blockDim.x) s += expf(to_f32(x[i]) - m);
    s = block_sum(s, scratch);
    if (threadIdx.x == 0) {
        const float l = m + logf(s);
        const uint32_t target = targets[row];
        lse[row] = l;
        nll[row] = target < (uint32_t)v ? l - to_f32(x[target]) : NAN;
    }
}

// dx = dnll (exp(x - lse) - onehot(target))
template <typename T>
__device__ void nll_backward(const T* x, const uint32_t* targets, const float* lse,
                             const float* dnll, T* dx, int v) {
    const long row = blockIdx.x;
    x += row * v;
    dx += row * v;
    const float l = lse[row], g = dnll[row];
    const uint32_t target = targets[row];
    for (int i = threadIdx.x; i < v; i += blockDim.x) {
        const float p = expf(to_f32(x[i]) - l);
        dx[i] = from_f32<T>(g * (p - ((uint32_t)i == target ? 1.0f : 0.0f)));
    }
}

#define NLL_KERNELS(T, S)                                                                        \
    extern "C" __global__ void nll_forward_##S(const T* x, const uint32_t* targets, float* lse,  \
                                               float* nll, int v) {                              \
        nll_forward<T>(x, targets, lse, nll, v);                                                 \
    }                                                                                            \
    LLMLAB_EXPORT(nll_forward_##S)                                                               \
    extern "C" __global__ void nll_backward_##S(const T* x, const uint32_t* targets,             \
                                                const float* lse, const float* dnll, T* dx,      \
                                                int v) {                                         \
        nll_backward<T>(x, targets, lse, dnll, dx, v);                                           \
    }                                                                                            \
    LLMLAB_EXPORT(nll_backward_##S)

FOR_EACH_DTYPE(NLL_KERNELS)

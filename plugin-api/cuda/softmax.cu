// Softmax over the last dimension and its backward (nn/src/ops/softmax.rs), one block per row.
#include "common.cuh"

template <typename T>
__device__ void softmax_forward(const T* x, T* y, int d) {
    __shared__ float scratch[32];
    const long row = blockIdx.x;
    x += row * d;
    y += row * d;
    float m = -INFINITY;
    for (int i = threadIdx.x; i < d; i += blockDim.x) m = fmaxf(m, to_f32(x[i]));
    m = block_max(m, scratch);
    float s = 0.0f;
    for (int i = threadIdx.x; i < d; i += blockDim.x) s += expf(to_f32(x[i]) - m);
    const float inv = 1.0f / block_sum(s, scratch);
    for (int i = threadIdx.x; i < d; i += blockDim.x) y[i] = from_f32<T>(expf(to_f32(x[i]) - m) * inv);
}

// dx = y (dy - Σ y dy)
template <typename T>
__device__ void softmax_backward(const T* y, const T* dy, T* dx, int d) {
    __shared__ float scratch[32];
    const long row = blockIdx.x;
    y += row * d;
    dy += row * d;
    dx += row * d;
    float s = 0.0f;
    for (int i = threadIdx.x; i < d; i += blockDim.x) s += to_f32(y[i]) * to_f32(dy[i]);
    s = block_sum(s, scratch);
    for (int i = threadIdx.x; i < d; i += blockDim.x)
        dx[i] = from_f32<T>(to_f32(y[i]) * (to_f32(dy[i]) - s));
}

#define SOFTMAX_KERNELS(T, S)                                                                    \
    extern "C" __global__ void softmax_forward_##S(const T* x, T* y, int d) {                    \
        softmax_forward<T>(x, y, d);                                                             \
    }                                                                                            \
    LLMLAB_EXPORT(softmax_forward_##S)                                                           \
    extern "C" __global__ void softmax_backward_##S(const T* y, const T* dy, T* dx, int d) {     \
        softmax_backward<T>(y, dy, dx, d);                                                       \
    }                                                                                            \
    LLMLAB_EXPORT(softmax_backward_##S)

FOR_EACH_DTYPE(SOFTMAX_KERNELS)

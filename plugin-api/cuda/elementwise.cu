// Elementwise activations and their backward in one pass each (nn/src/ops/gelu.rs, swiglu.rs):
// GELU with the tanh approximation, SwiGLU's silu(gate) · up. Grid-stride loops over `n`.
#include "common.cuh"

#define GELU_SQRT_2_OVER_PI 0.7978845608f
#define GELU_COEF 0.044715f

#define GRID_STRIDE(i, n) \
    for (long i = (long)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (long)gridDim.x * blockDim.x)

template <typename T>
__device__ void gelu_forward(const T* x, T* y, long n) {
    GRID_STRIDE(i, n) {
        const float v = to_f32(x[i]);
        const float u = GELU_SQRT_2_OVER_PI * (v + GELU_COEF * v * v * v);
        y[i] = from_f32<T>(0.5f * v * (1.0f + tanhf(u)));
    }
}

template <typename T>
__device__ void gelu_backward(const T* x, const T* dy, T* dx, long n) {
    GRID_STRIDE(i, n) {
        const float v = to_f32(x[i]), v2 = v * v;
        const float t = tanhf(GELU_SQRT_2_OVER_PI * (v + GELU_COEF * v2 * v));
        const float du = GELU_SQRT_2_OVER_PI * (1.0f + 3.0f * GELU_COEF * v2);
        dx[i] = from_f32<T>(to_f32(dy[i]) * (0.5f * (1.0f + t) + 0.5f * v * (1.0f - t * t) * du));
    }
}

__device__ __forceinline__ float sigmoid(float g) { return 1.0f / (1.0f + expf(-g)); }

template <typename T>
__device__ void swiglu_forward(const T* g, const T* u, T* y, long n) {
    GRID_STRIDE(i, n) {
        const float gv = to_f32(g[i]);
        y[i] = from_f32<T>(gv * sigmoid(gv) * to_f32(u[i]));
    }
}

// d_up = dy silu(g), d_gate = dy up σ(g) (1 + g (1 - σ(g)))
template <typename T>
__device__ void swiglu_backward(const T* g, const T* u, const T* dy, T* dg, T* du, long n) {
    GRID_STRIDE(i, n) {
        const float gv = to_f32(g[i]), uv = to_f32(u[i]), d = to_f32(dy[i]);
        const float s = sigmoid(gv);
        du[i] = from_f32<T>(d * gv * s);
        dg[i] = from_f32<T>(d * uv * s * (1.0f + gv * (1.0f - s)));
    }
}

#define ELEMENTWISE_KERNELS(T, S)                                                                \
    extern "C" __global__ void gelu_forward_##S(const T* x, T* y, long n) {                      \
        gelu_forward<T>(x, y, n);                                                                \
    }                                                                                            \
    LLMLAB_EXPORT(gelu_forward_##S)                                                              \
    extern "C" __global__ void gelu_backward_##S(const T* x, const T* dy, T* dx, long n) {       \
        gelu_backward<T>(x, dy, dx, n);                                                          \
    }                                                                                            \
    LLMLAB_EXPORT(gelu_backward_##S)                                                             \
    extern "C" __global__ void swiglu_forward_##S(const T* g, const T* u, T* y, long n) {        \
        swiglu_forward<T>(g, u, y, n);                                                           \
    }                                                                                            \
    LLMLAB_EXPORT(swiglu_forward_##S)                                                            \
    extern "C" __global__ void swiglu_backward_##S(const T* g, const T* u, const T* dy, T* dg,   \
                                                   T* du, long n) {                              \
        swiglu_backward<T>(g, u, dy, dg, du, n);                                                 \
    }                                                                                            \
    LLMLAB_EXPORT(swiglu_backward_##S)

FOR_EACH_DTYPE(ELEMENTWISE_KERNELS)

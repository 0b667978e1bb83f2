// LayerNorm and RMSNorm over the last dimension (nn/src/ops/layer_norm.rs, rms_norm.rs): one
// block per row for the forward and for dx; dw/db as column sums over chunks of rows, then one
// pass adding the chunks (no atomics, so the result does not depend on scheduling).
#include "common.cuh"

// μ (0 for RMSNorm) and r = 1/√(σ² + ε) of one row, two passes (the mean first: no
// cancellation in the variance); every thread of the block gets both.
template <typename T>
__device__ void row_stats(const T* x, int d, float eps, int rms, float* scratch, float& mean,
                          float& r) {
    mean = 0.0f;
    if (!rms) {
        float s = 0.0f;
        for (int i = threadIdx.x; i < d; i += blockDim.x) s += to_f32(x[i]);
        mean = block_sum(s, scratch) / d;
    }
    float ss = 0.0f;
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
        const float c = to_f32(x[i]) - mean;
        ss += c * c;
    }
    r = rsqrtf(block_sum(ss, scratch) / d + eps);
}

// y = (x - μ) r w + b; RMSNorm when `rms` (μ = 0, no bias). `b` may be null.
template <typename T>
__device__ void norm_forward(const T* x, const T* w, const T* b, T* y, int d, float eps, int rms) {
    __shared__ float scratch[32];
    const long row = blockIdx.x;
    x += row * d;
    y += row * d;
    float mean, r;
    row_stats(x, d, eps, rms, scratch, mean, r);
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
        float v = (to_f32(x[i]) - mean) * r * to_f32(w[i]);
        if (b) v += to_f32(b[i]);
        y[i] = from_f32<T>(v);
    }
}

// dx of one row, and the row's (μ, r) into `stats` for the column sums:
// x̂ = (x - μ) r, g = dy w, dx = r (g - mean(g) - x̂ mean(g x̂)); RMSNorm drops μ and mean(g).
template <typename T>
__device__ void norm_backward_dx(const T* x, const T* w, const T* dy, T* dx, float* stats, int d,
                                 float eps, int rms) {
    __shared__ float scratch[32];
    const long row = blockIdx.x;
    x += row * d;
    dy += row * d;
    dx += row * d;
    float mean, r;
    row_stats(x, d, eps, rms, scratch, mean, r);
    float sg = 0.0f, sgx = 0.0f;
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
        const float g = to_f32(dy[i]) * to_f32(w[i]);
        sg += g;
        sgx += g * (to_f32(x[i]) - mean) * r;
    }
    const float a = rms ? 0.0f : block_sum(sg, scratch) / d;
    const float c = block_sum(sgx, scratch) / d;
    for (int i = threadIdx.x; i < d; i += blockDim.x) {
        const float g = to_f32(dy[i]) * to_f32(w[i]);
        const float xh = (to_f32(x[i]) - mean) * r;
        dx[i] = from_f32<T>(r * (g - a - xh * c));
    }
    if (threadIdx.x == 0) {
        stats[2 * row] = mean;
        stats[2 * row + 1] = r;
    }
}

// Column sums of dy x̂ (dw) and dy (db) over the rows of chunk blockIdx.y, one thread per column,
// into partial[chunk][0..d) and partial[chunk][d..2d).
template <typename T>
__device__ void norm_backward_columns(const T* x, const T* dy, const float* stats, float* partial,
                                      int rows, int d, int rows_per_chunk) {
    const int col = blockIdx.x * blockDim.x + threadIdx.x;
    if (col >= d) return;
    const long first = (long)blockIdx.y * rows_per_chunk;
    long last = first + rows_per_chunk;
    if (last > rows) last = rows;
    float sw = 0.0f, sb = 0.0f;
    for (long row = first; row < last; row++) {
        const float g = to_f32(dy[row * d + col]);
        sw += g * (to_f32(x[row * d + col]) - stats[2 * row]) * stats[2 * row + 1];
        sb += g;
    }
    partial[(long)blockIdx.y * 2 * d + col] = sw;
    partial[(long)blockIdx.y * 2 * d + d + col] = sb;
}

// dw (and db when not null) from the chunks' partial sums, one thread per column.
template <typename T>
__device__ void norm_backward_finish(const float* partial, T* dw, T* db, int chunks, int d) {
    const int col = blockIdx.x * blockDim.x + threadIdx.x;
    if (col >= d) return;
    float sw = 0.0f, sb = 0.0f;
    for (int c = 0; c < chunks; c++) {
        sw += partial[(long)c * 2 * d + col];
        sb += partial[(long)c * 2 * d + d + col];
    }
    dw[col] = from_f32<T>(sw);
    if (db) db[col] = from_f32<T>(sb);
}

#define NORM_KERNELS(T, S)                                                                       \
    extern "C" __global__ void norm_forward_##S(const T* x, const T* w, const T* b, T* y, int d, \
                                                float eps, int rms) {                            \
        norm_forward<T>(x, w, b, y, d, eps, rms);                                                \
    }                                                                                            \
    LLMLAB_EXPORT(norm_forward_##S)                                                              \
    extern "C" __global__ void norm_backward_dx_##S(const T* x, const T* w, const T* dy, T* dx,  \
                                                    float* stats, int d, float eps, int rms) {   \
        norm_backward_dx<T>(x, w, dy, dx, stats, d, eps, rms);                                   \
    }                                                                                            \
    LLMLAB_EXPORT(norm_backward_dx_##S)                                                          \
    extern "C" __global__ void norm_backward_columns_##S(const T* x, const T* dy,                \
                                                         const float* stats, float* partial,     \
                                                         int rows, int d, int rows_per_chunk) {  \
        norm_backward_columns<T>(x, dy, stats, partial, rows, d, rows_per_chunk);                \
    }                                                                                            \
    LLMLAB_EXPORT(norm_backward_columns_##S)                                                     \
    extern "C" __global__ void norm_backward_finish_##S(const float* partial, T* dw, T* db,      \
                                                        int chunks, int d) {                     \
        norm_backward_finish<T>(partial, dw, db, chunks, d);                                     \
    }                                                                                            \
    LLMLAB_EXPORT(norm_backward_finish_##S)

FOR_EACH_DTYPE(NORM_KERNELS)

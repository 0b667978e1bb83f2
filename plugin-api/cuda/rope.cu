// Rotary embeddings in the rotate-half layout (nn/src/ops/rope.rs): one thread per rotated pair.
// Rows are head rows of `hd`, laid out (b, t, heads, hd) when `seq_major`, else (b, heads, t, hd);
// the first `rotated` heads rotate by (cos, sign · sin), the others are copied. The backward is
// the same kernel with sign = -1.
#include "common.cuh"

template <typename T>
__device__ void rope_rotate(const T* x, T* y, const T* cos_t, const T* sin_t, long rows, int t,
                            int heads, int hd, int seq_major, int rotated, float sign) {
    const int half = hd / 2;
    const long pairs = rows * half;
    for (long p = (long)blockIdx.x * blockDim.x + threadIdx.x; p < pairs;
         p += (long)gridDim.x * blockDim.x) {
        const long row = p / half;
        const int i = (int)(p % half);
        const int ti = seq_major ? (int)((row / heads) % t) : (int)(row % t);
        const int head = seq_major ? (int)(row % heads) : (int)((row / t) % heads);
        const long a = row * hd + i, b = a + half;
        if (head < rotated) {
            const float c = to_f32(cos_t[(long)ti * half + i]);
            const float s = sign * to_f32(sin_t[(long)ti * half + i]);
            const float x1 = to_f32(x[a]), x2 = to_f32(x[b]);
            y[a] = from_f32<T>(x1 * c - x2 * s);
            y[b] = from_f32<T>(x2 * c + x1 * s);
        } else {
            y[a] = x[a];
            y[b] = x[b];
        }
    }
}

#define ROPE_KERNELS(T, S)                                                                       \
    extern "C" __global__ void rope_rotate_##S(const T* x, T* y, const T* cos_t, const T* sin_t, \
                                               long rows, int t, int heads, int hd,              \
                                               int seq_major, int rotated, float sign) {         \
        rope_rotate<T>(x, y, cos_t, sin_t, rows, t, heads, hd, seq_major, rotated, sign);        \
    }                                                                                            \
    LLMLAB_EXPORT(rope_rotate_##S)

FOR_EACH_DTYPE(ROPE_KERNELS)

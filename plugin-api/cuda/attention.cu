// Causal attention over the packed projection qkv (b, t, h + 2 kv, hd) into out (b, t, h, hd),
// forward and backward, flash-attention style (Dao et al. 2022): key/value tiles stream through
// shared memory, each query row keeps a running max and sum (online softmax), and only the
// row's log-sum-exp (b, h, t) is saved for the backward, never the t × t probabilities.
// Grouped-query attention is native: query head hq reads key/value head hq / (h / kv).
// All arithmetic is f32 whatever the element type.
//
// The backward is two kernels with no atomics (FlashAttention-1's split): dQ by query rows,
// recomputing P from the saved log-sum-exp; dK and dV by key rows, looping over the query heads
// of the group and the query rows at or after the key. dQ also writes delta = rowsum(dO ⊙ O),
// which dK/dV read, so it runs first.
//
// One thread per row. The head width is a template parameter HD (16, 32, 64 or 128; a head of
// hd < HD runs in the next wider one, its extra columns zero), so the row's vectors are fully
// unrolled into registers instead of a stack frame (ptxas: 1,152-byte frame per forward thread
// with a runtime width, none with HD = 64). Wider heads take the composed path (launches.rs).
#include "common.cuh"
#define ATT_ROWS 64   // query rows per block (forward, dQ); key rows per block (dK/dV)
#define ATT_TILE 32   // rows per shared-memory tile

__device__ __forceinline__ long packed_row(int bi, int ti, int head, int t, int heads, int hd) {
    return (((long)bi * t + ti) * heads + head) * hd;
}

// Loads rows [first, first + ATT_TILE) of one head of a (b, t, heads, hd) buffer into `tile`
// (zeros past t and past hd); every thread of the block takes part.
template <int HD, typename T>
__device__ void load_tile(float (*tile)[HD], const T* src, int bi, int first, int head, int t,
                          int heads, int hd) {
    for (int e = threadIdx.x; e < ATT_TILE * HD; e += blockDim.x) {
        const int r = e / HD, c = e % HD, row = first + r;
        tile[r][c] = row < t && c < hd ? to_f32(src[packed_row(bi, row, head, t, heads, hd) + c])
                                       : 0.0f;
    }
}

template <int HD, typename T>
__device__ void attention_forward(const T* qkv, T* out, float* lse, int t, int h, int kv, int hd,
                                  float scale) {
    __shared__ float ks[ATT_TILE][HD];
    __shared__ float vs[ATT_TILE][HD];
    const int bi = blockIdx.z, hq = blockIdx.y, heads = h + 2 * kv, kvh = hq / (h / kv);
    const int first = blockIdx.x * ATT_ROWS, i = first + threadIdx.x;
    const bool active = i < t;
    float q[HD], acc[HD];
    float m = -INFINITY, l = 0.0f;
    if (active) {
        const T* qp = qkv + packed_row(bi, i, hq, t, heads, hd);
        #pragma unroll
        for (int c = 0; c < HD; c++) {
            q[c] = c < hd ? to_f32(qp[c]) * scale : 0.0f;
            acc[c] = 0.0f;
        }
    }
    const int last = min(first + ATT_ROWS, t) - 1;
    for (int k0 = 0; k0 <= last; k0 += ATT_TILE) {
        __syncthreads();  // the previous tile is no longer read
        load_tile(ks, qkv, bi, k0, h + kvh, t, heads, hd);
        load_tile(vs, qkv, bi, k0, h + kv + kvh, t, heads, hd);
        __syncthreads();
        if (!active || k0 > i) continue;
        const int n = min(ATT_TILE, i - k0 + 1);
        float s[ATT_TILE];  // unrolled with constant indices: registers, not a stack frame
        float tile_max = -INFINITY;
        #pragma unroll
        for (int j = 0; j < ATT_TILE; j++) {
            float d = 0.0f;
            #pragma unroll
            for (int c = 0; c < HD; c++) d += q[c] * ks[j][c];
            s[j] = j < n ? d : -INFINITY;
            tile_max = fmaxf(tile_max, s[j]);
        }
        const float m_new = fmaxf(m, tile_max);
        const float correction = expf(m - m_new);  // 0 on the first tile (m = -inf)
        l *= correction;
        #pragma unroll
        for (int c = 0; c < HD; c++) acc[c] *= correction;
        #pragma unroll
        for (int j = 0; j < ATT_TILE; j++) {
            const float p = expf(s[j] - m_new);  // 0 past the diagonal (s = -inf)
            l += p;
            #pragma unroll
            for (int c = 0; c < HD; c++) acc[c] += p * vs[j][c];
        }
        m = m_new;
    }
    if (active) {
        T* op = out + packed_row(bi, i, hq, t, h, hd);
        const float inv = 1.0f / l;
        #pragma unroll
        for (int c = 0; c < HD; c++)
            if (c < hd) op[c] = from_f32<T>(acc[c] * inv);
        lse[((long)bi * h + hq) * t + i] = m + logf(l);
    }
}

// dQ = scale · Σ_j P_ij (dO_i·V_j − delta_i) K_j over j ≤ i; also delta_i = dO_i·O_i.
template <int HD, typename T>
__device__ void attention_backward_dq(const T* qkv, const T* out, const T* dout, const float* lse,
                                      float* delta, T* dqkv, int t, int h, int kv, int hd,
                                      float scale) {
    __shared__ float ks[ATT_TILE][HD];
    __shared__ float vs[ATT_TILE][HD];
    const int bi = blockIdx.z, hq = blockIdx.y, heads = h + 2 * kv, kvh = hq / (h / kv);
    const int first = blockIdx.x * ATT_ROWS, i = first + threadIdx.x;
    const bool active = i < t;
    float q[HD], dout_i[HD], dq[HD];
    float lse_i = 0.0f, delta_i = 0.0f;
    if (active) {
        const T* qp = qkv + packed_row(bi, i, hq, t, heads, hd);
        const T* op = out + packed_row(bi, i, hq, t, h, hd);
        const T* dp = dout + packed_row(bi, i, hq, t, h, hd);
        #pragma unroll
        for (int c = 0; c < HD; c++) {
            const bool in = c < hd;
            q[c] = in ? to_f32(qp[c]) * scale : 0.0f;
            dout_i[c] = in ? to_f32(dp[c]) : 0.0f;
            if (in) delta_i += dout_i[c] * to_f32(op[c]);
            dq[c] = 0.0f;
        }
        const long stat = ((long)bi * h + hq) * t + i;
        lse_i = lse[stat];
        delta[stat] = delta_i;
    }
    const int last = min(first + ATT_ROWS, t) - 1;
    for (int k0 = 0; k0 <= last; k0 += ATT_TILE) {
        __syncthreads();
        load_tile(ks, qkv, bi, k0, h + kvh, t, heads, hd);
        load_tile(vs, qkv, bi, k0, h + kv + kvh, t, heads, hd);
        __syncthreads();
        if (!active || k0 > i) continue;
        const int n = min(ATT_TILE, i - k0 + 1);
        for (int j = 0; j < n; j++) {
            float s = 0.0f, dp = 0.0f;
            #pragma unroll
            for (int c = 0; c < HD; c++) {
                s += q[c] * ks[j][c];
                dp += dout_i[c] * vs[j][c];
            }
            const float ds = expf(s - lse_i) * (dp - delta_i);
            #pragma unroll
            for (int c = 0; c < HD; c++) dq[c] += ds * ks[j][c];
        }
    }
    if (active) {
        T* gp = dqkv + packed_row(bi, i, hq, t, heads, hd);
        #pragma unroll
        for (int c = 0; c < HD; c++)
            if (c < hd) gp[c] = from_f32<T>(dq[c] * scale);
    }
}

// dV_j = Σ P_ij dO_i, dK_j = scale · Σ dS_ij Q_i over the group's query heads and i ≥ j.
template <int HD, typename T>
__device__ void attention_backward_dkv(const T* qkv, const T* dout, const float* lse,
                                       const float* delta, T* dqkv, int t, int h, int kv, int hd,
                                       float scale) {
    __shared__ float qs[ATT_TILE][HD];
    __shared__ float dos[ATT_TILE][HD];
    __shared__ float lse_s[ATT_TILE], delta_s[ATT_TILE];
    const int bi = blockIdx.z, kvh = blockIdx.y, heads = h + 2 * kv, group = h / kv;
    const int first = blockIdx.x * ATT_ROWS, j = first + threadIdx.x;
    const bool active = j < t;
    float k[HD], v[HD], dk[HD], dv[HD];
    if (active) {
        const T* kp = qkv + packed_row(bi, j, h + kvh, t, heads, hd);
        const T* vp = qkv + packed_row(bi, j, h + kv + kvh, t, heads, hd);
        #pragma unroll
        for (int c = 0; c < HD; c++) {
            k[c] = c < hd ? to_f32(kp[c]) : 0.0f;
            v[c] = c < hd ? to_f32(vp[c]) : 0.0f;
            dk[c] = 0.0f;
            dv[c] = 0.0f;
        }
    }
    for (int g = 0; g < group; g++) {
        const int hq = kvh * group + g;
        for (int q0 = first; q0 < t; q0 += ATT_TILE) {
            __syncthreads();
            load_tile(qs, qkv, bi, q0, hq, t, heads, hd);
            load_tile(dos, dout, bi, q0, hq, t, h, hd);
            for (int r = threadIdx.x; r < ATT_TILE; r += blockDim.x) {
                const long stat = ((long)bi * h + hq) * t + q0 + r;
                lse_s[r] = q0 + r < t ? lse[stat] : 0.0f;
                delta_s[r] = q0 + r < t ? delta[stat] : 0.0f;
            }
            __syncthreads();
            if (!active) continue;
            for (int r = 0; r < ATT_TILE; r++) {
                const int i = q0 + r;
                if (i >= t) break;
                if (i < j) continue;
                float s = 0.0f, dp = 0.0f;
                #pragma unroll
                for (int c = 0; c < HD; c++) {
                    s += qs[r][c] * k[c];
                    dp += dos[r][c] * v[c];
                }
                const float p = expf(s * scale - lse_s[r]);
                const float ds = p * (dp - delta_s[r]);
                #pragma unroll
                for (int c = 0; c < HD; c++) {
                    dv[c] += p * dos[r][c];
                    dk[c] += ds * qs[r][c];
                }
            }
        }
    }
    if (active) {
        T* kp = dqkv + packed_row(bi, j, h + kvh, t, heads, hd);
        T* vp = dqkv + packed_row(bi, j, h + kv + kvh, t, heads, hd);
        #pragma unroll
        for (int c = 0; c < HD; c++) {
            if (c < hd) {
                kp[c] = from_f32<T>(dk[c] * scale);
                vp[c] = from_f32<T>(dv[c]);
            }
        }
    }
}

// One kernel per element type and head-width bucket: attention_forward_bf16_hd64, ...
#define ATTENTION_KERNELS_HD(T, S, HD)                                                           \
    extern "C" __global__ void attention_forward_##S##_hd##HD(                                   \
        const T* qkv, T* out, float* lse, int t, int h, int kv, int hd, float scale) {           \
        attention_forward<HD, T>(qkv, out, lse, t, h, kv, hd, scale);                            \
    }                                                                                            \
    LLMLAB_EXPORT(attention_forward_##S##_hd##HD)                                                \
    extern "C" __global__ void attention_backward_dq_##S##_hd##HD(                               \
        const T* qkv, const T* out, const T* dout, const float* lse, float* delta, T* dqkv,      \
        int t, int h, int kv, int hd, float scale) {                                             \
        attention_backward_dq<HD, T>(qkv, out, dout, lse, delta, dqkv, t, h, kv, hd, scale);     \
    }                                                                                            \
    LLMLAB_EXPORT(attention_backward_dq_##S##_hd##HD)                                            \
    extern "C" __global__ void attention_backward_dkv_##S##_hd##HD(                              \
        const T* qkv, const T* dout, const float* lse, const float* delta, T* dqkv, int t,       \
        int h, int kv, int hd, float scale) {                                                    \
        attention_backward_dkv<HD, T>(qkv, dout, lse, delta, dqkv, t, h, kv, hd, scale);         \
    }                                                                                            \
    LLMLAB_EXPORT(attention_backward_dkv_##S##_hd##HD)

#define ATTENTION_KERNELS(T, S)          \
    ATTENTION_KERNELS_HD(T, S, 16)       \
    ATTENTION_KERNELS_HD(T, S, 32)       \
    ATTENTION_KERNELS_HD(T, S, 64)       \
    ATTENTION_KERNELS_HD(T, S, 128)

FOR_EACH_DTYPE(ATTENTION_KERNELS)

// Shared by every llmlab kernel: element types (f32, bf16, f16 loaded and stored through f32:
// all arithmetic and accumulation is f32), block-wide reductions, the export macro.
//
// The same sources compile two ways: by nvcc into the PTX the CUDA build embeds (plugin-api/build.rs),
// and by a host C++ compiler with emulation.h force-included, so the CPU test suite runs every
// kernel with the launch configuration the CUDA path uses (nn/tests/cuda_kernels_emulated.rs).
// That is why reductions below are written so that every thread of a block calls each shuffle
// and each __syncthreads (the emulation's barriers count the whole block).
#pragma once

#ifdef __CUDACC__
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>
typedef __nv_bfloat16 bf16_t;
typedef __half f16_t;
__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(bf16_t x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_f32(f16_t x) { return __half2float(x); }
template <typename T> __device__ __forceinline__ T from_f32(float x);
template <> __device__ __forceinline__ float from_f32<float>(float x) { return x; }
template <> __device__ __forceinline__ bf16_t from_f32<bf16_t>(float x) { return __float2bfloat16(x); }
template <> __device__ __forceinline__ f16_t from_f32<f16_t>(float x) { return __float2half(x); }
#define LLMLAB_EXPORT(name)
#endif

#define WARP 32
#define FULL_MASK 0xffffffffu

// Sum over the 32 lanes of a warp; every lane gets the result.
__device__ __forceinline__ float warp_sum(float v) {
    for (int m = WARP / 2; m > 0; m /= 2) v += __shfl_xor_sync(FULL_MASK, v, m);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
    for (int m = WARP / 2; m > 0; m /= 2) v = fmaxf(v, __shfl_xor_sync(FULL_MASK, v, m));
    return v;
}

// Sum over a whole block (blockDim.x a multiple of 32, at most 1024); every thread gets the
// result. `scratch` holds 32 floats of shared memory; the call may be repeated with it.
__device__ __forceinline__ float block_sum(float v, float* scratch) {
    const int lane = threadIdx.x % WARP, warp = threadIdx.x / WARP;
    const int warps = blockDim.x / WARP;
    v = warp_sum(v);
    __syncthreads();  // scratch may still be read by a previous call
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : 0.0f;
    return warp_sum(v);
}

__device__ __forceinline__ float block_max(float v, float* scratch) {
    const int lane = threadIdx.x % WARP, warp = threadIdx.x / WARP;
    const int warps = blockDim.x / WARP;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < warps ? scratch[lane] : -INFINITY;
    return warp_max(v);
}

// Instantiates `KERNEL_TEMPLATE(T, suffix)` for the three element types.
#define FOR_EACH_DTYPE(KERNEL_TEMPLATE) \
    KERNEL_TEMPLATE(float, f32)         \
    KERNEL_TEMPLATE(bf16_t, bf16)       \
    KERNEL_TEMPLATE(f16_t, f16)

// Runs the CUDA kernels of this directory on the CPU, for the test suite of a machine without a
// GPU (nn/tests/cuda_kernels_emulated.rs compiles ops.cu with `-include emulation.h`).
//
// Each block runs alone (so `__shared__` can be a function-local `static`), its threads as real
// OS threads meeting at one std::barrier per `__syncthreads`. Warp shuffles go through a
// block-wide exchange with two barriers, which is why the kernels call them from every thread of
// the block (common.cuh). A thread that returns leaves the barrier (`arrive_and_drop`), as an
// exited CUDA thread no longer counts. Every kernel gets an `emu_<name>(grid, block, args)`
// entry taking its arguments as cuLaunchKernel does (an array of pointers to the values).
//
// This checks indexing, tiling, reductions, synchronisation and arithmetic; it does not check
// what only hardware shows (warp-synchronous assumptions, bank conflicts, speed).
#pragma once
#ifndef __CUDACC__

#include <algorithm>
#include <barrier>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <mutex>
#include <thread>
#include <type_traits>
#include <utility>
#include <vector>

struct dim3 {
    unsigned x, y, z;
};

namespace emu {
inline thread_local dim3 thread_idx, block_idx;
inline dim3 block_dim, grid_dim;
inline std::barrier<>* block_barrier = nullptr;
inline float shuffle_slots[1024];
inline std::mutex launch_lock;

inline unsigned linear_thread() {
    return thread_idx.x + block_dim.x * (thread_idx.y + block_dim.y * thread_idx.z);
}
}  // namespace emu

#define threadIdx (emu::thread_idx)
#define blockIdx (emu::block_idx)
#define blockDim (emu::block_dim)
#define gridDim (emu::grid_dim)
#define __global__
#define __device__
#define __forceinline__ inline
#define __shared__ static

using std::max;
using std::min;

inline void __syncthreads() { emu::block_barrier->arrive_and_wait(); }

inline float __shfl_xor_sync(unsigned, float v, int lane_mask) {
    const unsigned me = emu::linear_thread();
    emu::shuffle_slots[me] = v;
    __syncthreads();
    const float other = emu::shuffle_slots[(me & ~31u) | ((me & 31u) ^ (unsigned)lane_mask)];
    __syncthreads();
    return other;
}

inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }

// bf16 and f16 as their bits; conversions round to nearest even like the device intrinsics.
struct bf16_t {
    uint16_t bits;
};
struct f16_t {
    uint16_t bits;
};
inline float to_f32(float x) { return x; }
inline float to_f32(bf16_t x) {
    const uint32_t u = (uint32_t)x.bits << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
}
inline float to_f32(f16_t x) {
    _Float16 h;
    std::memcpy(&h, &x.bits, 2);
    return (float)h;
}
template <typename T> inline T from_f32(float x);
template <> inline float from_f32<float>(float x) { return x; }
template <> inline bf16_t from_f32<bf16_t>(float x) {
    uint32_t u;
    std::memcpy(&u, &x, 4);
    if (std::isnan(x)) return bf16_t{0x7fc0};
    u += 0x7fffu + ((u >> 16) & 1u);
    return bf16_t{(uint16_t)(u >> 16)};
}
template <> inline f16_t from_f32<f16_t>(float x) {
    const _Float16 h = (_Float16)x;
    f16_t r;
    std::memcpy(&r.bits, &h, 2);
    return r;
}

namespace emu {
template <typename... A, size_t... I>
void invoke(void (*kernel)(A...), void** args, std::index_sequence<I...>) {
    kernel(*static_cast<std::remove_cv_t<A>*>(args[I])...);
}

template <typename... A>
void launch(void (*kernel)(A...), const unsigned* grid, const unsigned* block, void** args) {
    // One launch at a time in the process: the grid, the barrier and shared memory are global.
    std::lock_guard<std::mutex> hold(launch_lock);
    grid_dim = {grid[0], grid[1], grid[2]};
    block_dim = {block[0], block[1], block[2]};
    const unsigned threads = block[0] * block[1] * block[2];
    for (unsigned bz = 0; bz < grid[2]; bz++)
        for (unsigned by = 0; by < grid[1]; by++)
            for (unsigned bx = 0; bx < grid[0]; bx++) {
                std::barrier<> barrier((std::ptrdiff_t)threads);
                block_barrier = &barrier;
                std::vector<std::thread> pool;
                pool.reserve(threads);
                for (unsigned i = 0; i < threads; i++) {
                    pool.emplace_back([=, &barrier] {
                        block_idx = {bx, by, bz};
                        thread_idx = {i % block[0], (i / block[0]) % block[1], i / (block[0] * block[1])};
                        invoke(kernel, args, std::index_sequence_for<A...>{});
                        barrier.arrive_and_drop();
                    });
                }
                for (auto& t : pool) t.join();
            }
}
}  // namespace emu

#define LLMLAB_EXPORT(name)                                                                 \
    extern "C" void emu_##name(const unsigned* grid, const unsigned* block, void** args) { \
        emu::launch(name, grid, block, args);                                               \
    }

#endif

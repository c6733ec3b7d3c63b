// scheduler.cu — kernels for the scheduler's tests, example and benchmark.
//
// empty()                      no work: measures launch and graph-node overhead.
// saxpy(a, x, y, n)            y[i] = a*x[i] + y[i]              (ref: saxpy_ref)
// mix2(a, x, b, y, out, n)     out[i] = a*x[i] + b*y[i]          (ref: mix2_ref)
// reduce_mean(x, out, n)       out[0] = mean(x[0..n)), one block, deterministic tree order
//                              (ref: reduce_mean_ref, float32 within rtol 1e-5)
// Layout: contiguous float32 vectors of n elements. Launch: 1-D grid-stride loops, any
// grid/block for saxpy/mix2; reduce_mean needs grid=1 and block=256.
// saxpy and mix2 are fusable (see grouped.cuh); the refs live in streamdag/scheduler/stdkernels.py.
#include "grouped.cuh"

extern "C" __global__ void empty() {}

struct saxpy_args {
  float a;
  const float* x;
  float* y;
  unsigned int n;
};
__device__ __forceinline__ void saxpy_body(const saxpy_args& p) {
  for (unsigned int i = blockIdx.x * blockDim.x + threadIdx.x; i < p.n; i += gridDim.x * blockDim.x)
    p.y[i] = p.a * p.x[i] + p.y[i];
}
extern "C" __global__ void saxpy(float a, const float* x, float* y, unsigned int n) {
  saxpy_body({a, x, y, n});
}
STREAMDAG_GROUPED(saxpy)

struct mix2_args {
  float a;
  const float* x;
  float b;
  const float* y;
  float* out;
  unsigned int n;
};
__device__ __forceinline__ void mix2_body(const mix2_args& p) {
  for (unsigned int i = blockIdx.x * blockDim.x + threadIdx.x; i < p.n; i += gridDim.x * blockDim.x)
    p.out[i] = p.a * p.x[i] + p.b * p.y[i];
}
extern "C" __global__ void mix2(float a, const float* x, float b, const float* y, float* out,
                                unsigned int n) {
  mix2_body({a, x, b, y, out, n});
}
STREAMDAG_GROUPED(mix2)

extern "C" __global__ void reduce_mean(const float* x, float* out, unsigned int n) {
  __shared__ float part[256];
  float acc = 0.f;
  for (unsigned int i = threadIdx.x; i < n; i += 256) acc += x[i];
  part[threadIdx.x] = acc;
  __syncthreads();
  for (unsigned int w = 128; w > 0; w >>= 1) {
    if (threadIdx.x < w) part[threadIdx.x] += part[threadIdx.x + w];
    __syncthreads();
  }
  if (threadIdx.x == 0) out[0] = part[0] / (float)n;
}

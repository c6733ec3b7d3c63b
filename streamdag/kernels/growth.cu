// growth.cu — what the device does between steps while a network grows
// (streamdag.backends.cuda, CudaBackend.on_mutation and the device growth scores).
//
// 1. Replaying a mutation batch. The host applies a batch to its ParamStore and records one
//    ParamOp per change (streamdag/params.py); the device mirror replays the ops in order, by
//    arena offset, so parameters and optimizer state of surviving groups never leave the
//    device. Host-provided values (new slots' `set`, `add_weights`, the standard normals of
//    `add_noise`) arrive in one staging upload.
//      sd_copy2d     [1-D grid-stride, block 256]  dst[r, c] (+)= scale * src[r, c], strided:
//                    copy_cols (weights and momenta), copy_bias, set, add_weights, and the
//                    arena copy when an arena grows                 (ParamStore.copy_columns)
//      sd_identity   [1-D grid-stride, block 256]  W = I            (ParamStore.set_identity)
//      sd_add_noise  [1 block of 256]  W += z * (rel * (std(W) or 1)); std over the slot in
//                    float64, the scale rounded to float like numpy's float32 product
//                                                                   (ParamStore.add_noise)
//    A zeroed slot (`alloc`) is a memset from the host side.
//
// 2. Growth scores (GradStdCriterion / ActMeanCriterion, streamdag/growth.py). Per stats slot
//    (groups in ascending id order, as NetTables.group_ids), ema[2 * slot] is the EMA of
//    std(dh) and ema[2 * slot + 1] the EMA of mean(h), seen[slot] whether the group was
//    observed since it was created or last forgotten. The arithmetic is the host's, in
//    float64 without contraction (__dmul_rn, __dadd_rn), on the float32 statistics the step
//    wrote, so device and host scores are bit-identical.
//      sd_ema_update [1-D, block 256]  one step's grad_std / act_mean folded in
//      sd_ema_remap  [1-D, block 256]  new slot i takes old slot map[i] (-1: forgotten/new)
//      sd_ema_select [1-D, block 256]  groups whose score passes a threshold, compacted with
//                    an atomic counter (unordered; the host sorts by id)

extern "C" __global__ void sd_copy2d(float* dst, const float* src, int dst_off, int dst_stride,
                                     int src_off, int src_stride, int rows, int ncols,
                                     float scale, int accumulate) {
  const long long n = (long long)rows * ncols;
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
       i += (long long)gridDim.x * blockDim.x) {
    const int r = (int)(i / ncols), c = (int)(i % ncols);
    const float v = __fmul_rn(src[src_off + (long long)r * src_stride + c], scale);
    float* d = dst + dst_off + (long long)r * dst_stride + c;
    *d = accumulate ? __fadd_rn(*d, v) : v;
  }
}

extern "C" __global__ void sd_identity(float* w, int off, int n) {
  const long long size = (long long)n * n;
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < size;
       i += (long long)gridDim.x * blockDim.x)
    w[off + i] = (i / n == i % n) ? 1.f : 0.f;
}

extern "C" __global__ void __launch_bounds__(256) sd_add_noise(float* w, int off, int size,
                                                                const float* z, int z_off,
                                                                double rel) {
  __shared__ double red[2][256];
  double s = 0.0, s2 = 0.0;
  for (int i = threadIdx.x; i < size; i += 256) {
    const double v = w[off + i];
    s += v;
    s2 += v * v;
  }
  red[0][threadIdx.x] = s;
  red[1][threadIdx.x] = s2;
  __syncthreads();
  for (int k = 128; k > 0; k >>= 1) {
    if (threadIdx.x < k) {
      red[0][threadIdx.x] += red[0][threadIdx.x + k];
      red[1][threadIdx.x] += red[1][threadIdx.x + k];
    }
    __syncthreads();
  }
  const double m = red[0][0] / size;
  double sd = sqrt(fmax(red[1][0] / size - m * m, 0.0));
  if (sd == 0.0) sd = 1.0;
  const float scale = (float)(rel * sd);
  for (int i = threadIdx.x; i < size; i += 256)
    w[off + i] = __fadd_rn(w[off + i], __fmul_rn(z[z_off + i], scale));
}

extern "C" __global__ void sd_ema_update(const float* grad_std, const float* act_mean, int n,
                                         double* ema, int* seen, double decay_std,
                                         double decay_act) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const double v[2] = {(double)grad_std[i], (double)act_mean[i]};
  const double d[2] = {decay_std, decay_act};
  for (int k = 0; k < 2; ++k) {
    double* e = ema + 2 * i + k;
    // host: d * old + (1.0 - d) * v, each operation rounded
    *e = seen[i] ? __dadd_rn(__dmul_rn(d[k], *e), __dmul_rn(__dadd_rn(1.0, -d[k]), v[k])) : v[k];
  }
  seen[i] = 1;
}

extern "C" __global__ void sd_ema_remap(const double* old_ema, const int* old_seen,
                                        const int* map, int n, double* ema, int* seen) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  const int j = map[i];
  if (j >= 0 && old_seen[j]) {
    ema[2 * i] = old_ema[2 * j];
    ema[2 * i + 1] = old_ema[2 * j + 1];
    seen[i] = 1;
  } else {
    ema[2 * i] = 0.0;
    ema[2 * i + 1] = 0.0;
    seen[i] = 0;
  }
}

// field 0: EMA of std(dh) > threshold; field 1: EMA of mean(h) < threshold. Seen slots only.
extern "C" __global__ void sd_ema_select(const double* ema, const int* seen, int n,
                                         const int* group_ids, int field, double threshold,
                                         int* count, int* out_ids, double* out_vals) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n || !seen[i]) return;
  const double v = ema[2 * i + field];
  if (field == 0 ? v > threshold : v < threshold) {
    const int k = atomicAdd(count, 1);
    out_ids[k] = group_ids[i];
    out_vals[k] = v;
  }
}

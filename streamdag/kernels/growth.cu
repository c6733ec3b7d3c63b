// growth.cu — what the device does between steps while a network grows
// (streamdag.backends.cuda, CudaBackend.on_mutation and the device growth scores).
//
// 1. Replaying a mutation batch. The host applies a batch to its ParamStore and records one
//    ParamOp per change (streamdag/params.py); the device mirror replays the ops in order, by
//    arena offset, so parameters and optimizer state of surviving groups never leave the
//    device. Host-provided values (new slots' `set`, `add_weights`, the standard normals of
//    `add_noise`) arrive in one staging upload, the ops as one table of SdParamOp records.
//      sd_replay     [1 block of 256]  the whole batch, op after op (__syncthreads between):
//                    a batch is a few dozen small ops, so one launch beats one per op.
//                    zero (alloc: the four arenas), copy_cols (weights and momenta, strided,
//                    scaled), copy_bias, identity, set, add_weights, and add_noise:
//                    W += z * (rel * (std(W) or 1)), std over the slot in float64, the scale
//                    rounded to float like numpy's float32 product.  (ParamStore methods)
//      sd_copy2d     [1-D grid-stride, block 256]  dst[r, c] (+)= scale * src[r, c], strided:
//                    the arena copy when an arena grows.
//      sd_move_slots [1-D, block 256]  a compaction of the host store (ParamStore.moves_since)
//                    followed on the device: every live slot copied to its new offset in a
//                    fresh arena (out of place: in place, a slot could overwrite another's
//                    source before it is read).
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

// The element type: float, or double in growth64.cu (SD_F64; CudaBackend with float64
// parameters), with its rounded product and sum (no contraction: numpy's rounding).
#ifdef SD_F64
typedef double sd_real;
#define SD_MUL_RN __dmul_rn
#define SD_ADD_RN __dadd_rn
#else
typedef float sd_real;
#define SD_MUL_RN __fmul_rn
#define SD_ADD_RN __fadd_rn
#endif

extern "C" __global__ void sd_copy2d(sd_real* dst, const sd_real* src, int dst_off, int dst_stride,
                                     int src_off, int src_stride, int rows, int ncols,
                                     sd_real scale, int accumulate) {
  const long long n = (long long)rows * ncols;
  for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n;
       i += (long long)gridDim.x * blockDim.x) {
    const int r = (int)(i / ncols), c = (int)(i % ncols);
    const sd_real v = SD_MUL_RN(src[src_off + (long long)r * src_stride + c], scale);
    sd_real* d = dst + dst_off + (long long)r * dst_stride + c;
    *d = accumulate ? SD_ADD_RN(*d, v) : v;
  }
}

// moves: int64 rows (old weight offset, new, size, old bias offset, new, size), one per slot;
// col 0 moves the weight ranges, col 3 the bias ranges. A block per slot (grid-stride).
extern "C" __global__ void sd_move_slots(const long long* __restrict__ moves, int n_moves,
                                         int col, sd_real* __restrict__ dst,
                                         const sd_real* __restrict__ src) {
  for (int m = blockIdx.x; m < n_moves; m += gridDim.x) {
    const long long from = moves[6LL * m + col], to = moves[6LL * m + col + 1];
    const long long size = moves[6LL * m + col + 2];
    for (long long i = threadIdx.x; i < size; i += blockDim.x) dst[to + i] = src[from + i];
  }
}

// One op of a replayed batch (CudaBackend._replay builds them; the numpy dtype there must
// match this layout). Offsets are in floats.
enum SdOpKind { SD_ZERO, SD_COPY_COLS, SD_COPY_BIAS, SD_IDENTITY, SD_SET, SD_ADD, SD_NOISE };
struct SdParamOp {
  int kind;
  int dst, dst_stride, src, src_stride, rows, ncols;
  int aux;       // SD_ZERO: bias offset; SD_SET: 1 = into the bias arena
  double scale;  // SD_COPY_COLS: the column scale; SD_NOISE: the relative std
};

// dst[r * dst_stride + c] (+)= scale * src[r * src_stride + c] for the block's threads
__device__ __forceinline__ void sd_block_copy(sd_real* dst, const sd_real* src, int rows, int ncols,
                                              int dst_stride, int src_stride, sd_real scale,
                                              bool accumulate) {
  for (int i = threadIdx.x; i < rows * ncols; i += blockDim.x) {
    const int r = i / ncols, c = i % ncols;
    const sd_real v = SD_MUL_RN(src[(long long)r * src_stride + c], scale);
    sd_real* d = dst + (long long)r * dst_stride + c;
    *d = accumulate ? SD_ADD_RN(*d, v) : v;
  }
}

extern "C" __global__ void __launch_bounds__(256) sd_replay(const SdParamOp* ops, int n_ops,
                                                             sd_real* w, sd_real* vw, sd_real* b,
                                                             sd_real* vb, const sd_real* stage) {
  __shared__ double red[2][256];
  for (int k = 0; k < n_ops; ++k) {
    const SdParamOp op = ops[k];
    switch (op.kind) {
      case SD_ZERO:  // a fresh slot: ncols weights at dst, rows biases at aux
        for (int i = threadIdx.x; i < op.ncols; i += blockDim.x) w[op.dst + i] = vw[op.dst + i] = 0.f;
        for (int i = threadIdx.x; i < op.rows; i += blockDim.x) b[op.aux + i] = vb[op.aux + i] = 0.f;
        break;
      case SD_COPY_COLS:
        sd_block_copy(w + op.dst, w + op.src, op.rows, op.ncols, op.dst_stride, op.src_stride,
                      (sd_real)op.scale, false);
        sd_block_copy(vw + op.dst, vw + op.src, op.rows, op.ncols, op.dst_stride,
                      op.src_stride, (sd_real)op.scale, false);
        break;
      case SD_COPY_BIAS:
        for (int i = threadIdx.x; i < op.rows; i += blockDim.x) {
          b[op.dst + i] = b[op.src + i];
          vb[op.dst + i] = vb[op.src + i];
        }
        break;
      case SD_IDENTITY:  // rows x rows
        for (int i = threadIdx.x; i < op.rows * op.rows; i += blockDim.x)
          w[op.dst + i] = (i / op.rows == i % op.rows) ? 1.f : 0.f;
        break;
      case SD_SET:  // ncols values from the staging buffer
        sd_block_copy((op.aux ? b : w) + op.dst, stage + op.src, 1, op.ncols, 0, 0, 1.f, false);
        break;
      case SD_ADD:
        sd_block_copy(w + op.dst, stage + op.src, 1, op.ncols, 0, 0, 1.f, true);
        break;
      case SD_NOISE: {  // W (ncols values at dst) += z * (rel * (std(W) or 1))
        double s = 0.0, s2 = 0.0;
        for (int i = threadIdx.x; i < op.ncols; i += blockDim.x) {
          const double v = w[op.dst + i];
          s += v;
          s2 += v * v;
        }
        red[0][threadIdx.x] = s;
        red[1][threadIdx.x] = s2;
        __syncthreads();
        for (int h = blockDim.x / 2; h > 0; h >>= 1) {
          if (threadIdx.x < h) {
            red[0][threadIdx.x] += red[0][threadIdx.x + h];
            red[1][threadIdx.x] += red[1][threadIdx.x + h];
          }
          __syncthreads();
        }
        const double m = red[0][0] / op.ncols;
        double sd = sqrt(fmax(red[1][0] / op.ncols - m * m, 0.0));
        if (sd == 0.0) sd = 1.0;
        const sd_real scale = (sd_real)(op.scale * sd);
        for (int i = threadIdx.x; i < op.ncols; i += blockDim.x)
          w[op.dst + i] = SD_ADD_RN(w[op.dst + i], SD_MUL_RN(stage[op.src + i], scale));
        break;
      }
    }
    __syncthreads();  // the next op may read what this one wrote
  }
}

extern "C" __global__ void sd_ema_update(const sd_real* grad_std, const sd_real* act_mean, int n,
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

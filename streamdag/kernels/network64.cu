// network64.cu — network.cu's level-sliced kernels, softmax, weight gradient and update in
// float64 (sd_real = double; see network.cu): what CudaBackend(dtype=np.float64) runs, in
// the streams modes only. Math, layout and launch shapes are network.cu's; the reference is
// streamdag/backends/reference.py with float64 parameters (within 1e-10 relative).
#define SD_F64 1
#include "network.cu"

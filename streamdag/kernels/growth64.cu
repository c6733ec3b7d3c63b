// growth64.cu — growth.cu for float64 parameters and statistics (sd_real = double; see
// growth.cu): what CudaBackend(dtype=np.float64) replays mutation batches and folds growth
// scores with. Math, layout and launch shapes are growth.cu's.
#define SD_F64 1
#include "growth.cu"

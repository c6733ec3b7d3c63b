// grouped.cuh — the convention for fusable ("grouped") kernels.
//
// A fusable kernel NAME is written as
//   struct NAME_args { <parameters, in order> };          // one table record
//   __device__ void NAME_body(const NAME_args& p);         // the work of one task
//   extern "C" __global__ void NAME(<parameters>) { NAME_body({<parameters>}); }
//   STREAMDAG_GROUPED(NAME)
// STREAMDAG_GROUPED defines NAME_grouped(const NAME_args* table, unsigned int count): one
// launch runs `count` tasks, task blockIdx.y with record table[blockIdx.y]; every task uses
// the same gridDim.x/blockDim, so a body must use blockIdx.x/gridDim.x only (1-D grids).
// The host packs records as a numpy structured dtype with align=True (pointers as uint64),
// which matches the C struct layout for the scalar and pointer types streamdag accepts.
#pragma once

#define STREAMDAG_GROUPED(NAME)                                                        \
  extern "C" __global__ void NAME##_grouped(const NAME##_args* table,                 \
                                            unsigned int count) {                     \
    if (blockIdx.y < count) NAME##_body(table[blockIdx.y]);                           \
  }

// Portability macros for code compiled both by the host compiler and by nvcc.
#pragma once

#if defined(__CUDACC__) || defined(__HIPCC__)
#define DGNET_HD __host__ __device__ __forceinline__
#else
#define DGNET_HD inline
#endif

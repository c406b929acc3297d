// Per-element logic of the pairwise distance, shared by the CPU and CUDA kernels.
#pragma once
#include <cmath>

#include "dgnet/macros.h"

namespace dgnet {

enum DistanceMetric : long { kEuclidean = 0, kSqEuclidean = 1, kCosine = 2 };

// From ||x||^2, ||y||^2 and <x, y> to the metric's value. Cosine inputs are pre-normalised.
DGNET_HD float distance_epilogue(float xx, float yy, float xy, long metric) {
  if (metric == kCosine) return 1.0f - xy;
  float d2 = xx + yy - 2.0f * xy;
  d2 = d2 > 0.0f ? d2 : 0.0f;  // cancellation can make it slightly negative
  return metric == kEuclidean ? sqrtf(d2) : d2;
}

}  // namespace dgnet

// C++ (LibTorch) tests of the dgnet operators, called through the dispatcher as a C++ user would.
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cstdio>
#include <cstdlib>

namespace {

int failures = 0;
int passes = 0;

void expect(bool ok, const char* what) {
  std::printf("%s %s\n", ok ? "PASS" : "FAIL", what);
  ++(ok ? passes : failures);
}

void test_pairwise_distance() {
  auto op = c10::Dispatcher::singleton()
                .findSchemaOrThrow("dgnet::pairwise_distance", "")
                .typed<at::Tensor(const at::Tensor&, const at::Tensor&, int64_t, int64_t)>();
  at::manual_seed(0);
  auto x = at::randn({37, 19});
  auto y = at::randn({53, 19});
  auto ref = at::cdist(x, y);
  expect(at::allclose(op.call(x, y, 0, 8), ref, 1e-4, 1e-4), "pairwise_distance euclidean, chunked, vs at::cdist");
  expect(at::allclose(op.call(x, y, 1, 0), ref.pow(2), 1e-3, 1e-3), "pairwise_distance sqeuclidean vs cdist^2");
}

}  // namespace

int main() {
  test_pairwise_distance();
  std::printf("%d passed, %d failed\n", passes, failures);
  return failures == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}

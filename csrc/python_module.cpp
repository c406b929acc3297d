// The Python module dgnet._C. It holds no functions: importing it loads the shared
// library, whose static initialisers register the dgnet operators with the dispatcher
// (see ops.cpp). Kept apart from ops.cpp so the CMake (LibTorch) build needs no Python.
#include <Python.h>

extern "C" {
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {
      PyModuleDef_HEAD_INIT, "_C", "dgnet compiled operators (registered as torch.ops.dgnet.*)", -1, nullptr,
  };
  return PyModule_Create(&module_def);
}
}

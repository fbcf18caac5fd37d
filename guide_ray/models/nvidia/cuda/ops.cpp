// Python bindings for the kernels in bias_act.cu and upfirdn2d.cu (loaded by compiled.py).

#include <torch/extension.h>

at::Tensor bias_act_cuda(const at::Tensor& g, const at::Tensor& z, const at::Tensor& b, int64_t mode,
                         int64_t dim, int64_t act, double alpha, double gain, double clamp);

at::Tensor upfirdn2d_cuda(const at::Tensor& x, const at::Tensor& f, int64_t upx, int64_t upy, int64_t downx,
                          int64_t downy, int64_t padx0, int64_t padx1, int64_t pady0, int64_t pady1,
                          bool flip_filter, double gain);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
    m.def("bias_act", &bias_act_cuda,
          "mode 0: clamp(gain * act(g + b)); mode 1/2: g * gain * act'/act''(z + b), 0 where clamped");
    m.def("upfirdn2d", &upfirdn2d_cuda, "upsample (zero insertion), pad, 2D FIR filter, downsample");
}

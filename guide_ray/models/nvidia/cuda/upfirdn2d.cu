// upfirdn2d with the semantics of NVIDIA's op (stylegan2-ada-pytorch torch_utils/ops/upfirdn2d.py):
// upsample by inserting zeros, pad (negative = crop), convolve with a 2D FIR filter, keep every
// down-th pixel. Each thread computes one output pixel by summing the filter taps that land on
// real (non-inserted, in-range) input pixels; the zero taps are skipped, never visited.

#include <algorithm>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

namespace {

// First tap k >= 0 for which u0 + k is a non-negative multiple of `up` (u0: the upsampled-grid
// coordinate under tap 0).
__device__ __forceinline__ int first_tap(int u0, int up) {
    int k = u0 < 0 ? -u0 : 0;
    int rem = (u0 + k) % up;
    return rem ? k + up - rem : k;
}

template <typename scalar_t>
__global__ void upfirdn2d_kernel(const scalar_t* __restrict__ x, const float* __restrict__ f,
                                 scalar_t* __restrict__ y, int64_t n, int in_h, int in_w, int out_h,
                                 int out_w, int fh, int fw, int upx, int upy, int downx, int downy,
                                 int padx0, int pady0, bool flip, double gain_d) {
    using T = at::opmath_type<scalar_t>;
    const T gain = T(gain_d);
    const int up_h = in_h * upy, up_w = in_w * upx;
    const int64_t stride = int64_t(blockDim.x) * gridDim.x;
    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
        const int ox = int(i % out_w);
        const int oy = int((i / out_w) % out_h);
        const int64_t plane = i / (int64_t(out_w) * out_h);
        const scalar_t* xp = x + plane * in_h * in_w;
        // Output (oy, ox) correlates the padded upsampled image at rows oy*downy + ky, columns
        // ox*downx + kx with the filter, flipped unless flip_filter (i.e. a true convolution).
        const int uy0 = oy * downy - pady0, ux0 = ox * downx - padx0;
        T acc = T(0);
        for (int ky = first_tap(uy0, upy); ky < fh && uy0 + ky < up_h; ky += upy) {
            const scalar_t* row = xp + int64_t((uy0 + ky) / upy) * in_w;
            const float* frow = f + int64_t(flip ? ky : fh - 1 - ky) * fw;
            for (int kx = first_tap(ux0, upx); kx < fw && ux0 + kx < up_w; kx += upx) {
                acc += T(row[(ux0 + kx) / upx]) * T(frow[flip ? kx : fw - 1 - kx]);
            }
        }
        y[i] = scalar_t(acc * gain);
    }
}

}  // namespace

at::Tensor upfirdn2d_cuda(const at::Tensor& x, const at::Tensor& f, int64_t upx, int64_t upy, int64_t downx,
                          int64_t downy, int64_t padx0, int64_t padx1, int64_t pady0, int64_t pady1,
                          bool flip_filter, double gain) {
    TORCH_CHECK(x.is_cuda() && x.is_contiguous() && x.dim() == 4,
                "upfirdn2d: x must be a contiguous 4D CUDA tensor [N, C, H, W]");
    TORCH_CHECK(f.device() == x.device() && f.is_contiguous() && f.dim() == 2 && f.scalar_type() == at::kFloat,
                "upfirdn2d: f must be a contiguous 2D float32 tensor on x's device");
    TORCH_CHECK(upx >= 1 && upy >= 1 && downx >= 1 && downy >= 1, "upfirdn2d: up and down must be >= 1");
    const int64_t in_h = x.size(2), in_w = x.size(3), fh = f.size(0), fw = f.size(1);
    const int64_t padded_h = in_h * upy + pady0 + pady1, padded_w = in_w * upx + padx0 + padx1;
    TORCH_CHECK(padded_h >= fh && padded_w >= fw, "upfirdn2d: the padded, upsampled input (", padded_h, "x",
                padded_w, ") is smaller than the filter (", fh, "x", fw, ")");
    const int64_t out_h = (padded_h - fh) / downy + 1, out_w = (padded_w - fw) / downx + 1;
    TORCH_CHECK(in_h * upy < INT32_MAX && in_w * upx < INT32_MAX && out_h * downy < INT32_MAX
                && out_w * downx < INT32_MAX, "upfirdn2d: spatial size too large");

    at::Tensor y = at::empty({x.size(0), x.size(1), out_h, out_w}, x.options());
    const int64_t n = y.numel();
    if (n == 0) return y;

    const c10::cuda::CUDAGuard guard(x.device());
    const int threads = 256;
    const int blocks = int(std::min<int64_t>((n + threads - 1) / threads, int64_t(1) << 20));
    cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "upfirdn2d_cuda", [&] {
        upfirdn2d_kernel<scalar_t><<<blocks, threads, 0, stream>>>(
            x.data_ptr<scalar_t>(), f.data_ptr<float>(), y.data_ptr<scalar_t>(), n, int(in_h), int(in_w),
            int(out_h), int(out_w), int(fh), int(fw), int(upx), int(upy), int(downx), int(downy), int(padx0),
            int(pady0), flip_filter, gain);
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return y;
}

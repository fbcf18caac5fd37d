// Fused bias + activation + gain + clamp, with the same semantics as NVIDIA's bias_act op
// (stylegan2-ada-pytorch torch_utils/ops/bias_act.py): y = clamp(gain * act(x + b), -c, c).
// One elementwise kernel serves the forward pass and both derivative orders:
//   mode 0: out = clamp(gain * act(g + b))
//   mode 1: out = g * gain * act'(z + b)  * pass(z + b)
//   mode 2: out = g * gain * act''(z + b) * pass(z + b)
// where pass(.) is 0 where the forward output was clamped, else 1.

#include <algorithm>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

namespace {

// Activation ids; the Python side (compiled.py, ACTIVATIONS) uses the same numbers.
enum Act { LINEAR = 1, RELU, LRELU, TANH, SIGMOID, ELU, SELU, SOFTPLUS, SWISH };

template <typename T>
__device__ __forceinline__ T sigmoid(T z) {
    return T(1) / (T(1) + exp(-z));
}

// order 0: act(z); order 1: act'(z); order 2: act''(z). Matches torch's definitions of
// relu, leaky_relu, tanh, sigmoid, elu (alpha 1), selu, softplus (threshold 20) and x*sigmoid(x).
template <int A, typename T>
__device__ __forceinline__ T activation(T z, T alpha, int order) {
    if (A == LINEAR) return order == 0 ? z : (order == 1 ? T(1) : T(0));
    if (A == RELU) return order == 0 ? (z > T(0) ? z : T(0)) : (order == 1 && z > T(0) ? T(1) : T(0));
    if (A == LRELU) {
        if (order == 0) return z > T(0) ? z : z * alpha;
        return order == 1 ? (z > T(0) ? T(1) : alpha) : T(0);
    }
    if (A == TANH) {
        T t = tanh(z);
        return order == 0 ? t : (order == 1 ? T(1) - t * t : T(-2) * t * (T(1) - t * t));
    }
    if (A == SIGMOID) {
        T s = sigmoid(z);
        return order == 0 ? s : (order == 1 ? s * (T(1) - s) : s * (T(1) - s) * (T(1) - T(2) * s));
    }
    if (A == ELU || A == SELU) {
        const T scale = A == SELU ? T(1.0507009873554804934193349852946) : T(1);
        const T a = A == SELU ? T(1.6732632423543772848170429916717) : T(1);
        if (z > T(0)) return order == 0 ? scale * z : (order == 1 ? scale : T(0));
        return order == 0 ? scale * a * expm1(z) : scale * a * exp(z);
    }
    if (A == SOFTPLUS) {
        if (z > T(20)) return order == 0 ? z : (order == 1 ? T(1) : T(0));
        if (order == 0) return log1p(exp(z));
        T s = sigmoid(z);
        return order == 1 ? s : s * (T(1) - s);
    }
    // SWISH: z * s(z); d/dz = s (1 + z (1 - s)); d2/dz2 = s (1 - s) (2 + z (1 - 2 s)).
    T s = sigmoid(z);
    if (order == 0) return z * s;
    if (order == 1) return s * (T(1) + z * (T(1) - s));
    return s * (T(1) - s) * (T(2) + z * (T(1) - T(2) * s));
}

template <int A, typename scalar_t>
__global__ void bias_act_kernel(const scalar_t* __restrict__ g, const scalar_t* __restrict__ z,
                                const scalar_t* __restrict__ b, scalar_t* __restrict__ out,
                                int64_t n, int64_t bias_step, int64_t bias_size, int mode,
                                double alpha_d, double gain_d, double clamp_d) {
    using T = at::opmath_type<scalar_t>;
    const T alpha = T(alpha_d), gain = T(gain_d), clamp = T(clamp_d);
    const int64_t stride = int64_t(blockDim.x) * gridDim.x;
    for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += stride) {
        T gi = T(g[i]);
        T pre = (mode == 0 ? gi : T(z[i])) + (b ? T(b[(i / bias_step) % bias_size]) : T(0));
        T y = gain * activation<A>(pre, alpha, 0);
        T r;
        if (mode == 0) {
            r = clamp >= T(0) ? fmin(fmax(y, -clamp), clamp) : y;
        } else {
            bool passed = clamp < T(0) || (y > -clamp && y < clamp);
            r = passed ? gi * gain * activation<A>(pre, alpha, mode) : T(0);
        }
        out[i] = scalar_t(r);
    }
}

template <typename scalar_t>
void launch_bias_act(int64_t act, int blocks, int threads, cudaStream_t stream, const scalar_t* g,
                     const scalar_t* z, const scalar_t* b, scalar_t* out, int64_t n, int64_t bias_step,
                     int64_t bias_size, int mode, double alpha, double gain, double clamp) {
    switch (act) {
#define GUIDE_RAY_CASE(A)                                                                                    \
    case A:                                                                                                   \
        bias_act_kernel<A, scalar_t><<<blocks, threads, 0, stream>>>(g, z, b, out, n, bias_step, bias_size, \
                                                                       mode, alpha, gain, clamp);            \
        break;
        GUIDE_RAY_CASE(LINEAR)
        GUIDE_RAY_CASE(RELU)
        GUIDE_RAY_CASE(LRELU)
        GUIDE_RAY_CASE(TANH)
        GUIDE_RAY_CASE(SIGMOID)
        GUIDE_RAY_CASE(ELU)
        GUIDE_RAY_CASE(SELU)
        GUIDE_RAY_CASE(SOFTPLUS)
        GUIDE_RAY_CASE(SWISH)
#undef GUIDE_RAY_CASE
    }
}

}  // namespace

at::Tensor bias_act_cuda(const at::Tensor& g, const at::Tensor& z, const at::Tensor& b, int64_t mode,
                         int64_t dim, int64_t act, double alpha, double gain, double clamp) {
    TORCH_CHECK(g.is_cuda() && g.is_contiguous(), "bias_act: g must be a contiguous CUDA tensor");
    TORCH_CHECK(mode >= 0 && mode <= 2, "bias_act: mode must be 0, 1 or 2, got ", mode);
    TORCH_CHECK(act >= LINEAR && act <= SWISH, "bias_act: unknown activation id ", act);
    TORCH_CHECK(mode == 0 || (z.sizes() == g.sizes() && z.is_contiguous() && z.scalar_type() == g.scalar_type()
                              && z.device() == g.device()),
                "bias_act: z must match g in shape, dtype, device and be contiguous");
    const bool has_bias = b.numel() > 0;
    int64_t bias_step = 1, bias_size = 1;
    if (has_bias) {
        TORCH_CHECK(b.dim() == 1 && b.is_contiguous() && b.scalar_type() == g.scalar_type() && b.device() == g.device(),
                    "bias_act: b must be a contiguous 1D tensor with g's dtype and device");
        TORCH_CHECK(dim >= 0 && dim < g.dim() && g.size(dim) == b.size(0),
                    "bias_act: b has ", b.size(0), " elements but g.shape[", dim, "] differs");
        bias_size = b.size(0);
        for (int64_t d = dim + 1; d < g.dim(); ++d) bias_step *= g.size(d);
    }
    at::Tensor out = at::empty_like(g);
    const int64_t n = g.numel();
    if (n == 0) return out;

    const c10::cuda::CUDAGuard guard(g.device());
    const int threads = 256;
    const int blocks = int(std::min<int64_t>((n + threads - 1) / threads, int64_t(1) << 20));
    cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, g.scalar_type(), "bias_act_cuda", [&] {
        launch_bias_act<scalar_t>(act, blocks, threads, stream, g.data_ptr<scalar_t>(),
                                  mode == 0 ? nullptr : z.data_ptr<scalar_t>(),
                                  has_bias ? b.data_ptr<scalar_t>() : nullptr, out.data_ptr<scalar_t>(), n,
                                  bias_step, bias_size, int(mode), alpha, gain, clamp);
    });
    C10_CUDA_KERNEL_LAUNCH_CHECK();
    return out;
}

"""The IR interpreter against OpenVINO's own execution, on small random graphs built here."""

import numpy as np
import openvino as ov
import openvino.opset13 as ops
import pytest
import torch

from guide_ray.models.openvino_ir import IRGraph

RNG = np.random.default_rng(0)


def const(*shape):
    return ops.constant((0.5 * RNG.standard_normal(shape)).astype(np.float32))


def int_const(values):
    return ops.constant(np.array(values, dtype=np.int64))


def style_like_graph():
    """A miniature of a StyleGAN-style export: a style input modulates two conv layers, with the
    dynamic-batch shape arithmetic, depthwise/grouped convs, a wavelet-like transposed conv,
    PixelNorm (Power/ReduceMean), PReLU, splits and a baked-in noise map."""
    w = ops.parameter([-1, 8], np.float32, name="style")
    img_in = ops.parameter([-1, 4, 6, 6], np.float32, name="x")
    pixel_norm = ops.power(ops.add(ops.reduce_mean(ops.power(img_in, ops.constant(np.float32(2))),
                                                   int_const([1]), keep_dims=True),
                                   ops.constant(np.float32(1e-8))), ops.constant(np.float32(-0.5)))
    batch = ops.unsqueeze(ops.gather(ops.shape_of(w), int_const(0), int_const(0)), int_const([0]))
    layers = []
    x = ops.multiply(img_in, pixel_norm)
    for channels in (4, 4):
        s = ops.add(ops.matmul(w, const(channels, 8), False, True), const(1, channels))
        s = ops.reshape(s, ops.concat([batch, int_const([channels, 1, 1])], 0), special_zero=True)
        layers.append(s)
        x = ops.multiply(x, s)
        x = ops.group_convolution(x, const(channels, 1, 1, 3, 3), [1, 1], [1, 1], [1, 1], [1, 1])
        x = ops.convolution(x, const(channels, channels, 1, 1), [1, 1], [0, 0], [0, 0], [1, 1])
        x = ops.add(x, const(1, 1, 6, 6))  # noise map
        x = ops.prelu(x, ops.constant(np.array([0.2], np.float32)))
    low, high = ops.variadic_split(x, int_const(1), int_const([1, -1])).outputs()
    up = ops.group_convolution_backprop_data(low, const(1, 1, 1, 2, 1), [2, 1], pads_begin=[0, 0],
                                             pads_end=[0, 0], dilations=[1, 1])
    tiled = ops.tile(ops.broadcast(const(1, 3, 1, 1), int_const([1, 3, 6, 6])),
                     ops.concat([batch, int_const([1, 1, 1])], 0))
    out = ops.concat([ops.squeeze(ops.unsqueeze(high, int_const([2])), int_const([2])), tiled], 1)
    return ov.Model([out.output(0), up.output(0)], [w, img_in], "mini")


@pytest.fixture(scope="module")
def mini_ir(tmp_path_factory):
    path = tmp_path_factory.mktemp("ir") / "mini.xml"
    ov.save_model(style_like_graph(), path, compress_to_fp16=False)
    return path


def run_openvino(path, *inputs):
    core = ov.Core()
    compiled = core.compile_model(core.read_model(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    result = compiled([x.numpy() for x in inputs])
    return [result[o] for o in compiled.outputs]


def test_interpreter_matches_openvino(mini_ir):
    graph = IRGraph(mini_ir)
    w, x = torch.randn(3, 8), torch.randn(3, 4, 6, 6)
    ours = graph(w, x)
    theirs = run_openvino(mini_ir, w, x)
    assert len(ours) == len(theirs) == 2
    for a, b in zip(ours, theirs):
        assert a.shape == b.shape
        # float32 summation order differs between the runtimes: compare at the output's scale
        np.testing.assert_allclose(a.detach().numpy(), b, rtol=1e-5, atol=1e-5 * np.abs(b).max())


def test_weights_become_parameters_and_receive_gradients(mini_ir):
    graph = IRGraph(mini_ir)
    names = dict(graph.params.items())
    shapes = sorted(tuple(p.shape) for p in names.values())
    assert (4, 8) in shapes and (4, 1, 1, 3, 3) in shapes  # modulation and depthwise weights
    assert all(p.numel() > 1 for p in names.values())  # scalars are not parameters
    assert not any(tuple(b.shape) == (1, 1, 6, 6) for b in names.values())  # noise is a buffer
    out, up = graph(torch.randn(2, 8), torch.randn(2, 4, 6, 6))
    (out.square().mean() + up.square().mean()).backward()
    for name, p in graph.params.items():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_fixed_consumers_stay_buffers(mini_ir):
    graph = IRGraph(mini_ir, fixed_consumers=("GroupConvolutionBackpropData",))
    assert not any(tuple(p.shape) == (1, 1, 1, 2, 1) for p in graph.params.values())
    assert any(tuple(b.shape) == (1, 1, 1, 2, 1) for b in graph.buffers())


def test_per_layer_input_splits_the_style(mini_ir):
    graph = IRGraph(mini_ir, per_layer_input=0)
    assert len(graph.input_consumers) == 2
    w, x = torch.randn(2, 8), torch.randn(2, 4, 6, 6)
    same = graph(w[:, None].repeat(1, 2, 1), x)[0]
    torch.testing.assert_close(same, graph(w, x)[0])
    # Changing only the second layer's style changes the output; the first layer is the one that
    # modulates first (its branch joins the data path before the other's).
    w2 = w[:, None].repeat(1, 2, 1)
    w2[:, 1] = torch.randn(2, 8)
    assert not torch.allclose(graph(w2, x)[0], same)
    first = graph.layers[graph.input_consumers[0]]
    second = graph.layers[graph.input_consumers[1]]
    assert int(first.id) < int(second.id)


def test_unsupported_op_is_named(tmp_path):
    p = ops.parameter([1, 4], np.float32)
    path = tmp_path / "sig.xml"
    ov.save_model(ov.Model([ops.sigmoid(p).output(0)], [p]), path, compress_to_fp16=False)
    with pytest.raises(NotImplementedError, match="Sigmoid"):
        IRGraph(path)(torch.randn(1, 4))

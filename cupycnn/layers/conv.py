"""Conv2D, PyTorch's `nn.Conv2d` (zero padding, no dilation, no groups), over the ops of
cupycnn/ops/conv2d.py; the maths is cupycnn/reference/conv2d.py, the kernels kernels/conv2d.cu.
The bias gradient is ops.reduce.channel_sum(dy).

Folded batchnorm statistics: `conv.feed_statistics_to(bn)` (the ResNets do it for every
convolution and the batchnorm after it) makes a training forward compute the batchnorm's
per-channel (sum y, sum y^2) in the convolution's epilogue (ops/conv2d_stats.py) and hand them
to `bn` with y; bn's training forward on that very array then skips its own pass over it
(batchnorm_stats). Any other input to bn (a hook's replacement, another array) is reduced as
before."""
from .. import cpu
from .. import devices as _device
from .. import random as _random
from ..cpu import parallel
from ..ops import conv2d as conv_ops
from ..ops import conv2d_stats
from ..ops import reduce as reduce_ops
from .base import Layer, LayerName, uniform_init
from .normalization import BatchNorm2D


class Conv2D(Layer):
    """2-D convolution, as PyTorch's `nn.Conv2d(in_channels, out_channels, kernel_size,
    stride=1, padding=0, bias=True)`: kernel_size, stride and padding are an int or an (h, w)
    pair; the padding is zeros. Not supported: dilation, groups, padding_mode other than zeros,
    string padding ('same', 'valid').

    Parameters (PyTorch's names and layouts): weight [out_channels, in_channels, kh, kw], bias
    [out_channels], both initialised as PyTorch's default (kaiming_uniform with a=sqrt(5)):
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with fan_in = in_channels * kh * kw.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True):
        super().__init__()
        self.kernel_size, self.stride, self.padding = conv_ops.check_hyper_parameters(
            "Conv2D", in_channels, out_channels, kernel_size, stride, padding)
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        kh, kw = self.kernel_size
        fan_in = self.in_channels * kh * kw
        rng = _random.generator()
        self.add_param("weight", uniform_init((self.out_channels, self.in_channels, kh, kw),
                                              fan_in, rng))
        if bias:
            self.add_param("bias", uniform_init((self.out_channels,), fan_in, rng))
        self.feed_statistics_to(None)

    def feed_statistics_to(self, batchnorm):
        """Compute `batchnorm`'s statistics in this convolution's epilogue when both run a
        training forward (the module's doc); None stops. Returns self."""
        if batchnorm is not None and (not isinstance(batchnorm, BatchNorm2D) or
                                      batchnorm.num_features != self.out_channels):
            raise ValueError(f"{self!r}: feed_statistics_to takes a BatchNorm2D of "
                             f"{self.out_channels} features (or None), got {batchnorm!r}")
        # Not a sub-layer (Layer.__setattr__ would register it): a reference to another child.
        object.__setattr__(self, "statistics_for", batchnorm)
        return self

    def extra_repr(self):
        # As torch.nn.Conv2d prints itself: padding only when not 0, bias only when absent.
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
             f"stride={self.stride}")
        if self.padding != (0, 0):
            s += f", padding={self.padding}"
        if "bias" not in self.params:
            s += ", bias=False"
        return s

    def output_shape(self, input_shape):
        n, _, h, w = input_shape
        return (n, self.out_channels) + conv_ops.checked_output_size(
            LayerName(self), h, w, self.kernel_size, self.stride, self.padding)

    def forward(self, x, training=None):
        self.check_input(x, ("N", self.in_channels, "H", "W"))
        self.output_shape(x.shape)
        cache = {} if training else None     # the numpy path keeps its im2col columns here
        self.save_for_backward(x=x, cache=cache)
        # x may be BF16 (ops._storage): the ops take it as it is, the weight stays float32.
        bn = self.statistics_for
        if bn is not None and self.is_training(training) and bn.is_training(training):
            y, sums = conv2d_stats.conv2d_forward_statistics(
                x, self.params["weight"], self.params.get("bias"), self.stride, self.padding,
                cache=cache)
            bn.receive_statistics(y, sums)
            return y
        return conv_ops.conv2d_forward(x, self.params["weight"], self.params.get("bias"),
                                       self.stride, self.padding, cache=cache)

    def backward(self, dy):
        saved = self.saved()
        x = saved["x"]
        self.check_grad_output(dy, self.output_shape(x.shape))
        weight = self.params["weight"]

        def parameter_gradients():
            conv_ops.conv2d_backward_weight(dy, x, weight.shape, self.stride, self.padding,
                                            out=self.grads["weight"], cache=saved["cache"])
            if "bias" in self.params:
                reduce_ops.channel_sum(dy, out=self.grads["bias"])

        def input_gradient():
            return conv_ops.conv2d_backward_input(dy, weight, x.shape, self.stride, self.padding)

        if not self.input_grad:              # nobody reads it (the model's input): skipped
            parameter_gradients()
            return None
        if _device.device() == "numpy" and cpu.fast(dy, x, weight):
            # The two gradients are independent: on the CPU path, one thread each.
            o, c, kh, kw = weight.shape
            work = parallel.product_bytes(o, c * kh * kw, dy.size // o)
            return parallel.run_together([parameter_gradients, input_gradient], 2 * work)[1]
        parameter_gradients()
        return input_gradient()

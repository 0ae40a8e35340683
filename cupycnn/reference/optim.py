"""Fused optimizer steps over flat buffers: the specification of kernels/optim.cu.

The optimizers of `cupycnn.optim` keep every parameter in one flat buffer, the gradients in a
second and their state (momentum buffers, Adam's moments) in more of the same layout. A step
walks the segments table (one row per parameter: offset, size, group, first block) and updates
each segment with its group's row of the hyperparameter table (columns below, as in optim.cu),
in place, in the buffers' dtype (float32, or float64 on the numpy device). The update rules are
PyTorch's (torch.optim.SGD, Adam, AdamW), with an L1 term and a gradient scale added:

    g = grad_scale * grad + weight_decay * w + l1 * sign(w)

    SGD     buf = g  (first step with momentum)  or  momentum * buf + (1 - dampening) * g
            g = g + momentum * buf  (Nesterov)  or  buf          (when momentum != 0)
            w = w - lr * g

    Adam    w = w * (1 - lr * decoupled_weight_decay)                   (AdamW only)
            m = beta1 * m + (1 - beta1) * g
            v = beta2 * v + (1 - beta2) * g^2
            w = w - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
"""
import numpy as np

# Columns of the segments table (kernels/optim.cu: SEG_*).
SEG_OFFSET, SEG_SIZE, SEG_GROUP, SEG_FIRST_BLOCK = range(4)
SEGMENT_FIELDS = 4

# Columns of the SGD hyperparameter table (optim.cu: SGD_*), and the momentum modes.
SGD_COLUMNS = ("lr", "momentum", "one_minus_dampening", "weight_decay", "l1", "nesterov",
               "momentum_mode")
(SGD_LR, SGD_MOMENTUM, SGD_ONE_MINUS_DAMPENING, SGD_WEIGHT_DECAY, SGD_L1, SGD_NESTEROV,
 SGD_MOMENTUM_MODE) = range(len(SGD_COLUMNS))
MOMENTUM_NONE, MOMENTUM_FIRST, MOMENTUM_RUNNING = 0, 1, 2

# Columns of the Adam / AdamW table (optim.cu: ADAM_*). The log columns are what the kernel
# computes its bias corrections from; the reference uses beta^t directly.
ADAM_COLUMNS = ("lr", "beta1", "one_minus_beta1", "beta2", "one_minus_beta2", "log_beta1",
                "log_beta2", "eps", "weight_decay", "decay_factor", "l1")
(ADAM_LR, ADAM_BETA1, ADAM_ONE_MINUS_BETA1, ADAM_BETA2, ADAM_ONE_MINUS_BETA2, ADAM_LOG_BETA1,
 ADAM_LOG_BETA2, ADAM_EPS, ADAM_WEIGHT_DECAY, ADAM_DECAY_FACTOR, ADAM_L1) = \
    range(len(ADAM_COLUMNS))


def _segments(segments):
    for offset, size, group, _ in np.asarray(segments, dtype=np.int64):
        yield slice(int(offset), int(offset) + int(size)), int(group)


def _regularised_gradient(w, grad, grad_scale, weight_decay, l1):
    """grad_scale * grad + weight_decay * w + l1 * sign(w); a zero term is not added at all (as
    PyTorch skips a zero weight decay), so an inf weight does not give 0 * inf = NaN."""
    g = grad * grad_scale
    if weight_decay != 0.0:
        g = g + weight_decay * w
    if l1 != 0.0:
        g = g + l1 * np.sign(w)
    return g


def sgd_step(params, grads, momentum_buffer, segments, groups, grad_scale=1.0):
    """One SGD step, in place on `params` (and `momentum_buffer`, which may be None when no group
    uses momentum). groups: [num_groups, len(SGD_COLUMNS)]."""
    for where, group in _segments(segments):
        hp = [float(v) for v in groups[group]]
        w = params[where]
        g = _regularised_gradient(w, grads[where], float(grad_scale), hp[SGD_WEIGHT_DECAY],
                                  hp[SGD_L1])
        mode = int(hp[SGD_MOMENTUM_MODE])
        if mode != MOMENTUM_NONE:
            buf = momentum_buffer[where]
            if mode == MOMENTUM_FIRST:
                buf[...] = g
            else:
                buf[...] = hp[SGD_MOMENTUM] * buf + hp[SGD_ONE_MINUS_DAMPENING] * g
            g = g + hp[SGD_MOMENTUM] * buf if hp[SGD_NESTEROV] else buf
        w -= hp[SGD_LR] * g
    return params


def adam_step(params, grads, exp_avg, exp_avg_sq, segments, groups, grad_scale=1.0, step=1):
    """One Adam or AdamW step number `step` (from 1), in place on `params`, `exp_avg` and
    `exp_avg_sq`. groups: [num_groups, len(ADAM_COLUMNS)]."""
    for where, group in _segments(segments):
        hp = [float(v) for v in groups[group]]
        w = params[where]
        g = _regularised_gradient(w, grads[where], float(grad_scale), hp[ADAM_WEIGHT_DECAY],
                                  hp[ADAM_L1])
        if hp[ADAM_DECAY_FACTOR] != 1.0:
            w *= hp[ADAM_DECAY_FACTOR]
        m, v = exp_avg[where], exp_avg_sq[where]
        m[...] = hp[ADAM_BETA1] * m + hp[ADAM_ONE_MINUS_BETA1] * g
        v[...] = hp[ADAM_BETA2] * v + hp[ADAM_ONE_MINUS_BETA2] * g * g
        bias_correction1 = 1.0 - hp[ADAM_BETA1] ** step
        bias_correction2_sqrt = (1.0 - hp[ADAM_BETA2] ** step) ** 0.5
        step_size = hp[ADAM_LR] / bias_correction1
        w -= step_size * m / (np.sqrt(v) / bias_correction2_sqrt + hp[ADAM_EPS])
    return params

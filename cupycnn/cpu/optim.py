"""The fused optimizer steps on the CPU, fast: reference/optim.py's updates, with the same
operations in the same order (so the same float32 results, bit for bit), applied piece by piece
(each piece in L2) on the threads, in place with out= and two reused temporaries instead of a
new full-size array per operation. Abutting segments of one group are updated as one range;
the padding between segments is never touched.
"""
import numpy as np

from . import parallel
from ..reference import optim as reference


def _pieces(segments):
    """[(start, stop, group)] covering every segment, abutting ones of a group merged, cut into
    pieces of at most parallel.PIECE_MAX elements."""
    ranges = []
    for offset, size, group, _ in np.asarray(segments, dtype=np.int64):
        offset, size, group = int(offset), int(size), int(group)
        if not size:
            continue
        if ranges and ranges[-1][1] == offset and ranges[-1][2] == group:
            ranges[-1][1] = offset + size
        else:
            ranges.append([offset, offset + size, group])
    pieces = []
    for start, stop, group in ranges:
        for a, b in parallel.chunks(stop - start, parallel.PIECE_MAX):
            pieces.append((start + a, start + b, group))
    return pieces


def _gradient(w, grad, grad_scale, weight_decay, l1, g, t):
    """grad_scale * grad + weight_decay * w + l1 * sign(w), as the reference (a zero term not
    added); into g (or grad itself when nothing is added or scaled)."""
    if weight_decay == 0.0 and l1 == 0.0:
        if grad_scale == 1.0:
            return grad
        return np.multiply(grad, grad_scale, out=g)
    if grad_scale == 1.0:
        np.copyto(g, grad)
    else:
        np.multiply(grad, grad_scale, out=g)
    if weight_decay != 0.0:
        np.multiply(w, weight_decay, out=t)
        np.add(g, t, out=g)
    if l1 != 0.0:
        np.sign(w, out=t)
        np.multiply(t, l1, out=t)
        np.add(g, t, out=g)
    return g


def _update_pieces(params, grads, segments, groups, grad_scale, decay, l1, update):
    """Run update(start, stop, hp, w, g, t) on the threads for every piece: hp the piece's group
    row of hyperparameters, w its parameters, g its gradient term (_gradient, with the group's
    columns `decay` and `l1`), t a temporary. Returns params."""
    pieces = _pieces(segments)
    rows = [[float(v) for v in row] for row in np.asarray(groups)]
    grad_scale = float(grad_scale)

    def task(k):
        start, stop, group = pieces[k]
        hp = rows[group]
        w = params[start:stop]
        g = parallel.scratch("optim.g", (stop - start,), params.dtype)
        t = parallel.scratch("optim.t", (stop - start,), params.dtype)
        g = _gradient(w, grads[start:stop], grad_scale, hp[decay], hp[l1], g, t)
        update(start, stop, hp, w, g, t)

    parallel.parallel_for(len(pieces), task, nbytes=4 * params.nbytes)
    return params


def sgd_step(params, grads, momentum_buffer, segments, groups, grad_scale=1.0):
    """As reference.sgd_step, in place."""

    def update(start, stop, hp, w, g, t):
        mode = int(hp[reference.SGD_MOMENTUM_MODE])
        if mode != reference.MOMENTUM_NONE:
            buf = momentum_buffer[start:stop]
            if mode == reference.MOMENTUM_FIRST:
                np.copyto(buf, g)
            else:
                np.multiply(buf, hp[reference.SGD_MOMENTUM], out=buf)
                np.multiply(g, hp[reference.SGD_ONE_MINUS_DAMPENING], out=t)
                np.add(buf, t, out=buf)
            if hp[reference.SGD_NESTEROV]:
                np.multiply(buf, hp[reference.SGD_MOMENTUM], out=t)
                g = np.add(g, t, out=parallel.scratch("optim.g", (stop - start,), params.dtype))
            else:
                g = buf
        np.multiply(g, hp[reference.SGD_LR], out=t)
        np.subtract(w, t, out=w)

    return _update_pieces(params, grads, segments, groups, grad_scale,
                          reference.SGD_WEIGHT_DECAY, reference.SGD_L1, update)


def adam_step(params, grads, exp_avg, exp_avg_sq, segments, groups, grad_scale=1.0, step=1):
    """As reference.adam_step, in place."""

    def update(start, stop, hp, w, g, t):
        m, v = exp_avg[start:stop], exp_avg_sq[start:stop]
        if hp[reference.ADAM_DECAY_FACTOR] != 1.0:
            np.multiply(w, hp[reference.ADAM_DECAY_FACTOR], out=w)
        np.multiply(m, hp[reference.ADAM_BETA1], out=m)
        np.multiply(g, hp[reference.ADAM_ONE_MINUS_BETA1], out=t)
        np.add(m, t, out=m)
        np.multiply(v, hp[reference.ADAM_BETA2], out=v)
        np.multiply(g, hp[reference.ADAM_ONE_MINUS_BETA2], out=t)
        np.multiply(t, g, out=t)
        np.add(v, t, out=v)
        bias_correction1 = 1.0 - hp[reference.ADAM_BETA1] ** step
        bias_correction2_sqrt = (1.0 - hp[reference.ADAM_BETA2] ** step) ** 0.5
        step_size = hp[reference.ADAM_LR] / bias_correction1
        np.sqrt(v, out=t)
        np.divide(t, bias_correction2_sqrt, out=t)
        np.add(t, hp[reference.ADAM_EPS], out=t)
        u = parallel.scratch("optim.g", (stop - start,), params.dtype)   # g is no longer read
        np.multiply(m, step_size, out=u)
        np.divide(u, t, out=u)
        np.subtract(w, u, out=w)

    return _update_pieces(params, grads, segments, groups, grad_scale,
                          reference.ADAM_WEIGHT_DECAY, reference.ADAM_L1, update)

"""Several jobs of a sweep as one network: every weight gets a leading job axis.

Jobs whose configs differ only in optimizer values, clipping, regularizer and lr schedule have
the same shapes, so N of them train as one wide network: one conv over N x C channels (grouped
after the first layer), one batched matmul per dense layer, one update of [N, ...] variables.
That keeps a small model's step busy enough to use the cores: per-step overhead is paid once
for N jobs instead of N times.

Each job still computes exactly what it computes alone: its initial weights are those of its
own Keras model (built after seeding, as a solo run builds it), all jobs draw the same batches
(same seed), and every per-job choice is a vector over the job axis: learning rate and the
optimizer's constants, the clipping mode and its numbers, the penalty. Optimizer updates follow
Keras 3's formulas; clipping follows tf.clip_by_value / clip_by_norm / clip_by_global_norm.
A job whose loss or gradients turn NaN/Inf is masked: its weights stop changing, the others go
on. `make_train_steps` returns the same per-job `Interval`s as runner.loop's.
"""
from typing import List, Sequence

import keras
import numpy as np
import tensorflow as tf

from runner.loop import SERIES, Interval
# Defined with the tasks (no TensorFlow): the stacked launcher plans its graphs before TF loads.
from runner.tasks import STACKABLE_MODELS, supports  # noqa: F401


def _cast(values) -> tf.Tensor:
    return tf.constant(np.asarray(values, dtype=np.float32))


def _per_job(vector, like):
    """[N] -> [N, 1, 1, ...] so it broadcasts against a [N, ...] variable."""
    return tf.reshape(vector, [-1] + [1] * (len(like.shape) - 1))


def _rest_axes(tensor):
    return list(range(1, len(tensor.shape)))


class StackedNet:
    """N Keras Sequential models of one architecture as one network over a job axis."""

    def __init__(self, models: Sequence[keras.Model]):
        self.models, self.template, self.n = list(models), models[0], len(models)
        names = [v.path for v in self.template.trainable_variables]
        self.names = names
        self.variables = [tf.Variable(np.stack([m.trainable_variables[i].numpy()
                                                for m in models]), name=f"stacked/{name}")
                          for i, name in enumerate(names)]
        self._index = {id(v): i for i, v in enumerate(self.template.trainable_variables)}

    def _weight(self, layer_variable):
        return self.variables[self._index[id(layer_variable)]]

    def __call__(self, x):
        """Logits [N, batch, classes] of every job on the same batch x [batch, ...]."""
        n, layout = self.n, "shared"  # shared [B, ...] | channels [B, H, W, N*C] | jobs [N, B, F]
        for layer in self.template.layers:
            if isinstance(layer, keras.layers.InputLayer):
                continue
            if isinstance(layer, keras.layers.ZeroPadding2D):
                (top, bottom), (left, right) = layer.padding
                x = tf.pad(x, [[0, 0], [top, bottom], [left, right], [0, 0]])
            elif isinstance(layer, keras.layers.Conv2D):
                kernel = self._weight(layer.kernel)  # [N, kh, kw, cin, cout]
                kh, kw, cin, cout = kernel.shape[1:]
                # Jobs side by side along the output channels; after the first conv each job
                # reads only its own input channels: a grouped convolution with N groups.
                filters = tf.reshape(tf.transpose(kernel, [1, 2, 3, 0, 4]), [kh, kw, cin, n * cout])
                x = tf.nn.conv2d(x, filters, strides=layer.strides, padding=layer.padding.upper(),
                                 dilations=layer.dilation_rate)
                if layer.use_bias:
                    x = tf.nn.bias_add(x, tf.reshape(self._weight(layer.bias), [n * cout]))
                x, layout = layer.activation(x), "channels"
            elif isinstance(layer, keras.layers.MaxPooling2D):
                x = tf.nn.max_pool2d(x, layer.pool_size, layer.strides, layer.padding.upper())
            elif isinstance(layer, keras.layers.Flatten):
                if layout == "channels":  # [B, H, W, N*C] -> [N, B, H*W*C], Keras' order per job
                    batch, height, width, channels = x.shape
                    x = tf.reshape(x, [-1, height, width, n, channels // n])
                    x = tf.reshape(tf.transpose(x, [3, 0, 1, 2, 4]),
                                   [n, -1, height * width * (channels // n)])
                    layout = "jobs"
                else:
                    x = tf.reshape(x, [tf.shape(x)[0], -1])
            elif isinstance(layer, keras.layers.Dense):
                kernel = self._weight(layer.kernel)  # [N, in, out]
                x = (tf.einsum("nbi,nio->nbo", x, kernel) if layout == "jobs"
                     else tf.einsum("bi,nio->nbo", x, kernel))
                if layer.use_bias:
                    x = x + self._weight(layer.bias)[:, None, :]
                x, layout = layer.activation(x), "jobs"
            else:
                raise ValueError(f"layer {layer.name} ({type(layer).__name__}) cannot be stacked")
        return x

    def write_back(self) -> None:
        """Each job's trained weights into its own Keras model (for summaries and plots)."""
        values = [v.numpy() for v in self.variables]  # one read each, not one slice per job
        for i, model in enumerate(self.models):
            for variable, stacked in zip(model.trainable_variables, values):
                variable.assign(stacked[i])


class Hyper:
    """Every per-job number the step needs, as [N] vectors (built once from the configs).

    Also which clipping modes and penalties occur at all: the step leaves out the work of any
    that no job of the stack uses (a sweep over lr alone pays for no clipping machinery).
    """

    def __init__(self, cfgs):
        clip = [c.clipping for c in cfgs]
        self.clip_modes = {c.name for c in clip}
        self.clip_mode = {mode: tf.constant([c.name == mode for c in clip])
                          for mode in ("none", "value", "norm", "global_norm")}
        # Bounds that leave every element alone for jobs that do not clip by value.
        self.value_min = _cast([c.min if c.name == "value" else -np.inf for c in clip])
        self.value_max = _cast([c.max if c.name == "value" else np.inf for c in clip])
        self.clip_norm = _cast([c.clip_norm for c in clip])
        reg = [c.regularizer for c in cfgs]
        self.l2 = _cast([r.strength if r.name == "l2" else 0.0 for r in reg])
        self.l1 = _cast([r.strength if r.name == "l1" else 0.0 for r in reg])
        self.any_l2 = any(r.name == "l2" and r.strength for r in reg)
        self.any_l1 = any(r.name == "l1" and r.strength for r in reg)
        self.penalise_biases = _cast([r.include_biases for r in reg])
        opt = [c.optimizer for c in cfgs]
        self.optimizer = opt[0].name  # one optimizer kind per stack (the launcher groups so)
        # Python-float arithmetic first, then float32: what Keras' update_step does.
        self.beta1, self.beta2 = _cast([o.beta1 for o in opt]), _cast([o.beta2 for o in opt])
        self.one_minus_beta1 = _cast([1 - o.beta1 for o in opt])
        self.one_minus_beta2 = _cast([1 - o.beta2 for o in opt])
        self.epsilon = _cast([o.epsilon for o in opt])
        self.rho, self.one_minus_rho = _cast([o.rho for o in opt]), _cast([1 - o.rho for o in opt])
        momentum = [o.momentum if o.name == "momentum" else 0.0 for o in opt]
        self.momentum = _cast(momentum)
        self.nesterov = tf.constant([o.name == "momentum" and o.nesterov for o in opt])


def penalty(variables, names_is_bias, hp: Hyper):
    """[N] penalties: strength * sum(v^2)/2 (l2) or strength * sum|v| (l1), per job."""
    total = tf.zeros_like(hp.l2)
    for strength, used, term in ((hp.l2, hp.any_l2, lambda v: tf.square(v) / 2),
                                 (hp.l1, hp.any_l1, tf.abs)):
        if not used:  # no job has this penalty: skip a pass over every weight
            continue
        terms = []
        for variable, is_bias in zip(variables, names_is_bias):
            weight = hp.penalise_biases if is_bias else tf.ones_like(hp.l2)
            terms.append(weight * tf.reduce_sum(term(variable), _rest_axes(variable)))
        total += strength * tf.add_n(terms)
    return total


def _norms(grads):
    per_var = tf.stack([tf.sqrt(tf.reduce_sum(tf.square(g), _rest_axes(g))) for g in grads], 1)
    return per_var, tf.sqrt(tf.reduce_sum(tf.square(per_var), 1))


def clip(grads, hp: Hyper):
    """Each job's gradients clipped its own way; stats as runner.clipping.clip's, per job.

    Every mode is one expression per tensor, `clip(g * numerator / denominator, lo, hi)`, with
    [N, variables] factors and [N] bounds that are 1 and +-inf for the jobs a mode does not
    concern: tf.clip_by_norm is g * c / max(norm, c), tf.clip_by_global_norm is g * scale,
    tf.clip_by_value is the bounds — the same arithmetic the TF op does for the job alone, at
    two or three passes over the gradients instead of one per mode.
    """
    var_norms, grad_norm = _norms(grads)
    modes = hp.clip_modes
    ones = tf.ones_like(var_norms)
    numerator, denominator = ones, ones
    fraction = tf.zeros_like(grad_norm)
    if "norm" in modes:
        by_norm = hp.clip_mode["norm"][:, None]
        cap = hp.clip_norm[:, None] * ones
        numerator = tf.where(by_norm, cap, numerator)
        denominator = tf.where(by_norm, tf.maximum(var_norms, cap), denominator)
        cut = tf.reduce_mean(tf.cast(var_norms > cap, tf.float32), 1)
        fraction = tf.where(hp.clip_mode["norm"], cut, fraction)
    if "global_norm" in modes:
        # An infinite norm gives NaN, as in TF.
        scale = hp.clip_norm * tf.minimum(1.0 / grad_norm, 1.0 / hp.clip_norm) \
            + (grad_norm - grad_norm)
        numerator = tf.where(hp.clip_mode["global_norm"][:, None], scale[:, None] * ones,
                             numerator)
        fraction = tf.where(hp.clip_mode["global_norm"],
                            tf.cast(grad_norm > hp.clip_norm, tf.float32), fraction)
    clipped = []
    outside = tf.zeros_like(grad_norm)
    for i, g in enumerate(grads):
        if modes & {"norm", "global_norm"}:
            g = g * _per_job(numerator[:, i], g) / _per_job(denominator[:, i], g)
        if "value" in modes:
            bounded = tf.clip_by_value(g, _per_job(hp.value_min, g), _per_job(hp.value_max, g))
            outside += tf.reduce_sum(tf.cast(tf.not_equal(bounded, g), tf.float32),
                                     _rest_axes(g))
            g = bounded
        clipped.append(g)
    if "value" in modes:
        elements = float(sum(int(np.prod(g.shape[1:])) for g in grads))
        fraction = tf.where(hp.clip_mode["value"], outside / elements, fraction)
    var_norms_clipped, grad_norm_clipped = ((var_norms, grad_norm) if modes == {"none"}
                                            else _norms(clipped))
    return clipped, {"grad_norm": grad_norm, "grad_norm_clipped": grad_norm_clipped,
                     "clip_fraction": fraction, "var_norms": var_norms,
                     "var_norms_clipped": var_norms_clipped}


class StackedOptimizer:
    """Keras 3's SGD (with momentum / Nesterov), Adam and RMSprop over [N, ...] variables, with
    per-job constants; a job outside `mask` is left exactly as it was (weights and slots)."""

    def __init__(self, variables, hp: Hyper):
        self.hp, self.variables = hp, variables
        self.iterations = tf.Variable(tf.zeros([len(hp.epsilon.numpy())], tf.int64),
                                      trainable=False)

        def slots(name):
            return [tf.Variable(tf.zeros_like(v), trainable=False, name=f"{name}/{v.name}")
                    for v in variables]
        self.first = slots("first")  # Adam m, RMSprop velocity, SGD momentum
        self.second = slots("second") if hp.optimizer == "adam" else None

    def apply(self, grads, lr, mask) -> None:
        """One update of the jobs in `mask`; while every job is in it (the usual case) no
        per-element masking is done at all."""
        def update(keep):
            self._update(grads, lr, keep)
            return tf.constant(True)
        tf.cond(tf.reduce_all(mask), lambda: update(None), lambda: update(mask))
        self.iterations.assign_add(tf.cast(mask, tf.int64))

    def _update(self, grads, lr, mask) -> None:
        hp, step = self.hp, tf.cast(self.iterations + 1, tf.float32)

        def assign(variable, value, keep):
            variable.assign(value if keep is None else tf.where(keep, value, variable))

        for i, (variable, g) in enumerate(zip(self.variables, grads)):
            keep = None if mask is None else _per_job(mask, g)
            rate = _per_job(lr, g)
            first = self.first[i]
            if hp.optimizer == "adam":
                second = self.second[i]
                alpha = lr * tf.sqrt(1 - tf.pow(hp.beta2, step)) / (1 - tf.pow(hp.beta1, step))
                m = first + (g - first) * _per_job(hp.one_minus_beta1, g)
                v = second + (tf.square(g) - second) * _per_job(hp.one_minus_beta2, g)
                new = variable - (m * _per_job(alpha, g)) / (tf.sqrt(v) + _per_job(hp.epsilon, g))
                assign(second, v, keep)
                assign(first, m, keep)
            elif hp.optimizer == "rmsprop":
                velocity = _per_job(hp.rho, g) * first + _per_job(hp.one_minus_rho, g) * tf.square(g)
                new = variable - rate * g / tf.sqrt(velocity + _per_job(hp.epsilon, g))
                assign(first, velocity, keep)
            else:  # sgd and momentum (momentum 0 = plain SGD, as Keras' SGD)
                momentum = _per_job(hp.momentum, g)
                m = first * momentum - g * rate
                nesterov = variable + (m * momentum - g * rate)
                plain = tf.where(_per_job(hp.momentum, g) > 0, variable + m, variable - g * rate)
                new = tf.where(_per_job(hp.nesterov, g), nesterov, plain)
                assign(first, m, keep)
            assign(variable, new, keep)


def make_train_steps(net: StackedNet, cfgs, lr_fns, batches, per_example_loss, capacity: int,
                     jit_compile: bool = False):
    """`train_steps(k)` -> [Interval per job], as runner.loop.make_train_steps, for N jobs in
    one network. `lr_fns[j]` is job j's step -> lr; `per_example_loss(labels, logits)`."""
    hp = Hyper(cfgs)
    n, train_cfg = net.n, cfgs[0].train
    optimizer = StackedOptimizer(net.variables, hp)
    alive = tf.Variable(tf.ones([n], tf.bool), trainable=False)
    is_bias = [len(v.shape) == 2 for v in net.variables]  # [N, units]: a bias vector per job
    divisor = float(train_cfg.batch_size) if train_cfg.loss_reduction == "sum" else 1.0
    reduce = tf.reduce_sum if train_cfg.loss_reduction == "sum" else tf.reduce_mean
    n_vars = len(net.variables)

    # Plain Python around TF ops, traced as written: AutoGraph's conversion of this step and
    # everything it calls was ~70% of the first call's time.
    @tf.autograph.experimental.do_not_convert
    def step():
        x, y = batches.next()
        lr = tf.stack([tf.cast(fn(optimizer.iterations[j]), tf.float32)
                       for j, fn in enumerate(lr_fns)])
        with tf.GradientTape() as tape:
            logits = net(x)
            objective = reduce(per_example_loss(tf.broadcast_to(y, [n, tf.shape(y)[0]]), logits),
                               axis=1)
            pen = penalty(net.variables, is_bias, hp)
            total = objective + pen
            # Jobs are independent: the gradient of the sum is each job's own gradient.
            summed = tf.reduce_sum(total)
        grads = tape.gradient(summed, net.variables)
        clipped, stats = clip(grads, hp)
        finite = (tf.math.is_finite(total) & tf.math.is_finite(stats["grad_norm"]) &
                  tf.math.is_finite(stats["grad_norm_clipped"]))
        update = alive & finite  # the divergence guard, per job
        optimizer.apply(clipped, lr, update)
        alive.assign(update)
        values = (objective / divisor, pen, lr, stats["grad_norm"], stats["grad_norm_clipped"],
                  stats["clip_fraction"])
        return update, values, stats["var_norms"], stats["var_norms_clipped"]

    @tf.function(jit_compile=jit_compile)
    def train_steps(k):
        series = [tf.TensorArray(tf.float32, size=capacity, element_shape=(n,)) for _ in SERIES]
        norms = [tf.TensorArray(tf.float32, size=capacity, element_shape=(n, n_vars))
                 for _ in range(2)]
        applied = tf.zeros([n], tf.int32)
        i = tf.constant(0)
        while i < k and tf.reduce_any(alive):
            update, values, before, after = step()
            applied += tf.cast(update, tf.int32)
            series = [ta.write(i, tf.cast(v, tf.float32)) for ta, v in zip(series, values)]
            norms = [norms[0].write(i, before), norms[1].write(i, after)]
            i += 1
        return applied, alive.read_value(), [ta.stack() for ta in series], \
            [ta.stack() for ta in norms]

    def call(k: int) -> List[Interval]:
        was_alive = alive.numpy()
        applied, now_alive, series, norms = train_steps(tf.constant(k))
        applied, now_alive = applied.numpy(), now_alive.numpy()
        series = [s.numpy() for s in series]
        before, after = (x.numpy() for x in norms)
        return [Interval(applied=int(applied[j]), diverged=bool(was_alive[j] and not now_alive[j]),
                         series={name: s[:applied[j], j] for name, s in zip(SERIES, series)},
                         var_norms=before[:applied[j], j], var_norms_clipped=after[:applied[j], j])
                for j in range(n)]

    return call


def make_evaluate(net: StackedNet, train_cfg, per_example_loss):
    """(x, y) -> [(mean loss, accuracy) per job], in chunks of `eval_batch_size`."""
    @tf.function(reduce_retracing=True)
    def chunk(x, y):
        logits = net(x)
        labels = tf.broadcast_to(y, [net.n, tf.shape(y)[0]])
        correct = tf.reduce_sum(tf.cast(tf.argmax(logits, -1, output_type=tf.int32) == labels,
                                        tf.float32), 1)
        return tf.reduce_sum(per_example_loss(labels, logits), 1), correct

    def evaluate(x, y):
        loss_sum, correct = np.zeros(net.n), np.zeros(net.n)
        for start in range(0, len(y), train_cfg.eval_batch_size):
            stop = start + train_cfg.eval_batch_size
            l, c = chunk(tf.constant(x[start:stop]), tf.constant(y[start:stop]))
            loss_sum, correct = loss_sum + l.numpy(), correct + c.numpy()
        return [(float(l) / len(y), float(c) / len(y)) for l, c in zip(loss_sum, correct)]

    return evaluate

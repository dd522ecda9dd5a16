"""The networks the engine trains, seen with a leading job axis.

The engine (runner/engine.py) reads and writes every weight as [N, ...] — job j's weights are
`w[j]` — so clipping, penalties and updates are written once for any N. Two networks give it
that view:

- `KerasNet`: one Keras model (N = 1), any architecture: its weights are stored as Keras holds
  them, and seen as [1, ...].
- `StackedNet`: N Keras models of one sequential architecture as one wide network: one conv
  over N x C channels (grouped when each job reads its own channels), one batched matmul per
  dense layer. Per-step overhead is paid once for N jobs instead of N times. Each job's initial
  weights are those of its own Keras model, built after seeding, as a solo run builds it.

Both take inputs shared by every job ([B, ...]) or one batch per job ([N, B, ...], when the
jobs' seeds differ) and return logits [N, B, classes].
"""
from typing import Optional, Sequence

import keras
import numpy as np
import tensorflow as tf

# The layers StackedNet computes over a job axis; a model with any other layer (dropout and
# normalisation draw or keep state per call; custom layers are unknown) trains one per graph.
STACKABLE_LAYERS = (keras.layers.InputLayer, keras.layers.ZeroPadding2D, keras.layers.Conv2D,
                    keras.layers.MaxPooling2D, keras.layers.AveragePooling2D,
                    keras.layers.Flatten, keras.layers.Dense, keras.layers.Activation)


def stack_reason(model: keras.Model) -> Optional[str]:
    """None if StackedNet can stack copies of `model`, else a one-line reason why not."""
    layers = model.layers
    for previous, layer in zip([None, *layers], layers):
        if type(layer) not in STACKABLE_LAYERS:
            return (f"layer {layer.name!r} ({type(layer).__name__}) has no stacked form "
                    f"(stackable: {', '.join(t.__name__ for t in STACKABLE_LAYERS[1:])})")
        if getattr(layer, "losses", None):
            return f"layer {layer.name!r} adds its own losses (a Keras regularizer)"
        if isinstance(layer, keras.layers.Conv2D) and (layer.groups != 1
                                                        or layer.data_format != "channels_last"):
            return f"layer {layer.name!r}: only channels_last convolutions with groups=1 stack"
        if not isinstance(model, keras.Sequential) and previous is not None:
            inbound = [t._keras_history.operation for t in _inputs_of(layer)]
            if inbound != [previous]:
                return "the model is not one chain of layers (a branch or a merge)"
    return None


def _inputs_of(layer):
    """The tensors a functional model feeds `layer` (one node per layer in a chain)."""
    node = layer._inbound_nodes[0]
    return list(node.input_tensors)


class KerasNet:
    """One Keras model as a network of N = 1 job; its weights are the model's own variables."""

    n = 1

    def __init__(self, model: keras.Model):
        self.model = model
        self.variables = list(model.trainable_variables)
        self.names = [v.path for v in self.variables]

    @staticmethod
    def view(tensor):
        """A weight, or its gradient (an embedding's is IndexedSlices), as [1, ...]."""
        return tf.convert_to_tensor(tensor)[None]

    @staticmethod
    def write(variable, value) -> None:
        variable.assign(value[0])

    def __call__(self, x, training: bool = True):
        if isinstance(x, (list, tuple)):  # several inputs (the LSTM's words and state)
            return self.model(x, training=training)
        return self.model(x[0] if x.shape.rank == len(self.model.input_shape) + 1 else x,
                          training=training)[None]

    def write_back(self) -> None:
        """The model trained in place."""


class StackedNet:
    """N Keras models of one sequential architecture as one network over a job axis."""

    def __init__(self, models: Sequence[keras.Model]):
        self.models, self.template, self.n = list(models), models[0], len(models)
        self.names = [v.path for v in self.template.trainable_variables]
        self.variables = [tf.Variable(np.stack([m.trainable_variables[i].numpy()
                                                for m in models]), name=f"stacked/{name}")
                          for i, name in enumerate(self.names)]
        self._index = {id(v): i for i, v in enumerate(self.template.trainable_variables)}

    @staticmethod
    def view(tensor):
        """A weight or its gradient: already [N, ...]."""
        return tf.convert_to_tensor(tensor)

    @staticmethod
    def write(variable, value) -> None:
        variable.assign(value)

    def _weight(self, layer_variable):
        return self.variables[self._index[id(layer_variable)]]

    def __call__(self, x, training: bool = True):
        """Logits [N, B, classes] of every job, on a shared batch [B, ...] or on one batch per
        job [N, B, ...] (`training` changes nothing: no stackable layer depends on it)."""
        n = self.n
        per_job_input = x.shape.rank == len(self.template.input_shape) + 1
        if per_job_input and x.shape.rank == 5:  # images: jobs side by side along channels
            x = _jobs_to_channels(x)
            layout = "channels"
        else:
            layout = "jobs" if per_job_input else "shared"
        # layout: shared [B, ...] | channels [B, H, W, N*C] | jobs [N, B, ...]
        for layer in self.template.layers:
            if isinstance(layer, keras.layers.InputLayer):
                continue
            if isinstance(layer, keras.layers.ZeroPadding2D):
                (top, bottom), (left, right) = layer.padding
                x = tf.pad(x, [[0, 0], [top, bottom], [left, right], [0, 0]])
            elif isinstance(layer, keras.layers.Conv2D):
                kernel = self._weight(layer.kernel)  # [N, kh, kw, cin, cout]
                kh, kw, cin, cout = kernel.shape[1:]
                # Jobs side by side along the output channels; when each job reads its own
                # input channels, this is a grouped convolution with N groups.
                filters = tf.reshape(tf.transpose(kernel, [1, 2, 3, 0, 4]), [kh, kw, cin, n * cout])
                if cin == 1 and x.shape[-1] == n and n > 1:
                    # One input channel per job: the grouped convolution is a depthwise one
                    # (channel multiplier cout, same job-major output order), which TF runs
                    # several times faster on CPU.
                    x = tf.nn.depthwise_conv2d(x, tf.reshape(filters, [kh, kw, n, cout]),
                                               strides=[1, *layer.strides, 1],
                                               padding=layer.padding.upper(),
                                               dilations=layer.dilation_rate)
                else:
                    x = tf.nn.conv2d(x, filters, strides=layer.strides,
                                     padding=layer.padding.upper(), dilations=layer.dilation_rate)
                if layer.use_bias:
                    x = tf.nn.bias_add(x, tf.reshape(self._weight(layer.bias), [n * cout]))
                x, layout = layer.activation(x), "channels"
            elif isinstance(layer, keras.layers.MaxPooling2D):
                x = tf.nn.max_pool2d(x, layer.pool_size, layer.strides, layer.padding.upper())
            elif isinstance(layer, keras.layers.AveragePooling2D):
                x = tf.nn.avg_pool2d(x, layer.pool_size, layer.strides, layer.padding.upper())
            elif isinstance(layer, keras.layers.Flatten):
                if layout == "channels":  # [B, H, W, N*C] -> [N, B, H*W*C], Keras' order per job
                    batch, height, width, channels = x.shape
                    x = tf.reshape(x, [-1, height, width, n, channels // n])
                    x = tf.reshape(tf.transpose(x, [3, 0, 1, 2, 4]),
                                   [n, -1, height * width * (channels // n)])
                elif layout == "jobs":
                    x = tf.reshape(x, [n, tf.shape(x)[1], -1])
                else:
                    x = tf.reshape(x, [tf.shape(x)[0], -1])
                    continue  # still shared: the first dense layer fans it out to the jobs
                layout = "jobs"
            elif isinstance(layer, keras.layers.Dense):
                kernel = self._weight(layer.kernel)  # [N, in, out]
                # A batched matmul, not einsum: the weight gradient of einsum (oneDNN's) took
                # 1.2 ms of a 14-LeNet step for fc1 alone.
                x = (tf.matmul(x, kernel) if layout == "jobs"
                     else tf.einsum("bi,nio->nbo", x, kernel))
                if layer.use_bias:
                    x = x + self._weight(layer.bias)[:, None, :]
                x, layout = layer.activation(x), "jobs"
            elif isinstance(layer, keras.layers.Activation):
                x = layer.activation(x)
            else:  # stack_reason() refused it before: reaching this is a bug
                raise TypeError(f"layer {layer.name} ({type(layer).__name__}) cannot be stacked")
        return x

    def write_back(self) -> None:
        """Each job's trained weights into its own Keras model (for summaries and plots)."""
        values = [v.numpy() for v in self.variables]  # one read each, not one slice per job
        for i, model in enumerate(self.models):
            for variable, stacked in zip(model.trainable_variables, values):
                variable.assign(stacked[i])


def _jobs_to_channels(x):
    """[N, B, H, W, C] -> [B, H, W, N*C]: job j's image in channels j*C ... (j+1)*C - 1."""
    n, _, height, width, channels = x.shape
    return tf.reshape(tf.transpose(x, [1, 2, 3, 0, 4]), [-1, height, width, n * channels])

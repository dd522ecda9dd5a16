"""Zaremba et al.'s word-level LSTM language model (seed 004; small / medium / large).

tokens [batch, num_steps] -> embedding -> dropout -> `layers` x (LSTM -> dropout) -> softmax
projection -> logits [batch, num_steps, vocab]. The LSTM states are explicit inputs and
outputs, so the training loop carries them from one window to the next inside a tf.function:

    logits, *states = model([tokens, *states], training=True)   # states: h1, c1, h2, c2, ...

As in the reference: every weight (embedding, LSTM kernels, softmax weights and bias) is
uniform in [-init_scale, init_scale]; the LSTM biases start at 0 with no forget-gate +1
(BasicLSTMCell(forget_bias=0.0)); dropout (rate 1 - keep_prob) on the embedded inputs and on
every LSTM layer's output, fresh per element and time step, only when training.
"""
import keras
from keras import layers


def state_shapes(cfg):
    """Shapes (without batch) of the state inputs/outputs, in order h1, c1, h2, c2, ..."""
    return [(cfg.hidden,)] * (2 * cfg.layers)


def build(cfg, info) -> keras.Model:
    def uniform():  # a new instance per variable: an unseeded Keras 3 initialiser fixes its seed
        return keras.initializers.RandomUniform(-cfg.init_scale, cfg.init_scale)

    rate = 1.0 - cfg.keep_prob
    tokens = keras.Input(shape=(cfg.num_steps,), dtype="int32", name="tokens")
    states_in = [keras.Input(shape=shape, name=f"{kind}{i // 2 + 1}")
                 for i, (shape, kind) in enumerate(zip(state_shapes(cfg), "hc" * cfg.layers))]
    x = layers.Embedding(info.vocab_size, cfg.hidden, embeddings_initializer=uniform(),
                         name="embedding")(tokens)
    if rate > 0:
        x = layers.Dropout(rate, name="dropout_in")(x)
    states_out = []
    for i in range(cfg.layers):
        x, h, c = layers.LSTM(
            cfg.hidden, return_sequences=True, return_state=True, unit_forget_bias=False,
            kernel_initializer=uniform(), recurrent_initializer=uniform(),
            bias_initializer="zeros", name=f"lstm{i + 1}",
        )(x, initial_state=states_in[2 * i:2 * i + 2])
        states_out += [h, c]
        if rate > 0:
            x = layers.Dropout(rate, name=f"dropout{i + 1}")(x)
    logits = layers.Dense(info.vocab_size, kernel_initializer=uniform(),
                          bias_initializer=uniform(), name="softmax")(x)
    return keras.Model([tokens, *states_in], [logits, *states_out], name=f"lstm_lm_{cfg.size}")

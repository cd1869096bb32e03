"""What a sampled softmax would save in a word-model training step: full against sampled, same batch.

Builds the word default (autoregressive decoder, hidden 192, embedding 128, vocabulary 4,000,
dropout 0.1, word dropout 0.3) and times one gradient step on one length-bucketed batch of 64
sentences, written by hand for both losses so that only the output layer differs: the full
softmax over the vocabulary (what training does) and ``tf.nn.sampled_softmax_loss`` with S
sampled words. Alternating, twice. A measuring tool for issue 10: nothing here changes training.

    .venv/bin/python -m bench.train_softmax [--width 16] [--samples 256,1024]
"""

from __future__ import annotations

import time

from bench.train_jit import word_step_setup
from seqcodec.model import names
from seqcodec.model.config import CodecConfig
from seqcodec.model.network import build_decoder, build_encoder
from seqcodec.model.tfenv import keras, tf


def timed_step(config: CodecConfig, batch, samples: int, steps: int) -> float:
    """Seconds per gradient step; ``samples`` 0 is the full softmax."""
    keras.utils.set_random_seed(0)
    encoder, decoder = build_encoder(config, 0.1), build_decoder(config, 0.1)
    hidden = keras.Model(decoder.inputs, decoder.get_layer("output_dropout").output)
    dense = decoder.get_layer(names.TOKEN_PROBS)
    (ids, previous), targets, weights = batch
    variables = encoder.trainable_variables + decoder.trainable_variables
    optimizer = keras.optimizers.Adam(2e-3, clipnorm=1.0)
    optimizer.build(variables)

    @tf.function
    def step(ids, previous, targets, weights):
        with tf.GradientTape() as tape:
            h = hidden([encoder(ids, training=True), previous], training=True)
            h = tf.reshape(h, [-1, config.hidden_size])
            labels = tf.reshape(tf.cast(targets, tf.int64), [-1, 1])
            if samples:
                losses = tf.nn.sampled_softmax_loss(tf.transpose(dense.kernel), dense.bias, labels, h, samples,
                                                    config.vocab_size)
            else:
                logits = tf.matmul(h, dense.kernel) + dense.bias
                losses = tf.nn.sparse_softmax_cross_entropy_with_logits(labels[:, 0], logits)
            w = tf.reshape(tf.cast(weights, tf.float32), [-1])
            loss = tf.reduce_sum(losses * w) / tf.reduce_sum(w)
        optimizer.apply(tape.gradient(loss, variables), variables)
        return loss

    for _ in range(3):
        step(ids, previous, targets, weights)
    start = time.perf_counter()
    for _ in range(steps):
        step(ids, previous, targets, weights)
    return (time.perf_counter() - start) / steps


def main() -> None:
    args, config, batch = word_step_setup(__doc__.splitlines()[0], {
        "--samples": {"default": "256,1024", "help": "sampled words per step, comma-separated"}})
    variants = [0, *(int(s) for s in args.samples.split(","))]
    for round_ in range(2):
        for samples in variants if round_ == 0 else variants[::-1]:
            seconds = timed_step(config, batch, samples, args.steps)
            name = "full softmax" if not samples else f"sampled, {samples} words"
            print(f"{name:22s} step {1000 * seconds:6.1f} ms", flush=True)


if __name__ == "__main__":
    main()

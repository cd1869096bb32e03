"""One training step of the word default with the decoder's steps and LSTM as two layers, and folded into one.

Builds the word default as ``train`` does (tied embedding and output, sampled softmax over 256 words,
dropout 0.1, word dropout 0.3) twice: with ``DecoderSteps`` and the LSTM as separate layers (training
before ``FoldedDecoderLSTM``) and folded into one layer, which computes the code's share of the gates
once per row instead of once per step. Times ``train_on_batch`` on one length-bucketed batch of 64
sentences of ``--width`` words, alternating the two, twice, after a warm-up that holds the trace.

    .venv/bin/python -m bench.train_folded [--width 16] [--steps 30]
"""

from __future__ import annotations

import time

from bench.train_jit import word_step_setup
from seqcodec.model.network import build_encoder, tied_decoder
from seqcodec.model.tfenv import keras
from seqcodec.model.train import SampledSoftmaxTraining


def step_seconds(config, batch, folded: bool, steps: int) -> float:
    """Seconds per ``train_on_batch`` of the word default, its decoder folded or not."""
    keras.utils.set_random_seed(0)
    encoder = build_encoder(config, 0.1)
    decoder = tied_decoder(config, 0.1, encoder, embeddings=True, output=True, folded=folded)
    model = SampledSoftmaxTraining(encoder, decoder, 256, config.vocab_size)
    model.compile(optimizer=keras.optimizers.Adam(2e-3, clipnorm=1.0), jit_compile=False)
    for _ in range(3):
        model.train_on_batch(*batch)
    start = time.perf_counter()
    for _ in range(steps):
        model.train_on_batch(*batch)
    return (time.perf_counter() - start) / steps


def main() -> None:
    args, config, batch = word_step_setup(__doc__.splitlines()[0])
    times: dict[bool, list[float]] = {False: [], True: []}
    for folded in (False, True, False, True):
        times[folded].append(step_seconds(config, batch, folded, args.steps))
        print(f"width {args.width}, {'folded    ' if folded else 'two layers'}: {1000 * times[folded][-1]:5.1f} ms",
              flush=True)
    two, one = (sum(times[f]) / len(times[f]) for f in (False, True))
    print(f"width {args.width}: folded / two layers = {one / two:.2f}")


if __name__ == "__main__":
    main()

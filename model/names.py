"""The standard network's layer names: what ``network.py`` builds and ``weights.py`` reads, written once."""

from __future__ import annotations

# Encoder: ids -> embedding -> (dropout) -> LSTM (bidirectional or not); code = [length, final state].
IDS = "ids"
EMBEDDING = "embedding"
EMBEDDING_DROPOUT = "embedding_dropout"
ENCODER_LSTM = "encoder_lstm"
LENGTH = "length"
CODE = "code"

# Decoder: code -> steps (h repeated, plus position signals) [+ previous token] -> LSTM -> token_probs.
STEPS = "steps"
PREVIOUS = "previous"
PREVIOUS_EMBEDDING = "previous_embedding"
PREVIOUS_DROPOUT = "previous_dropout"
DECODER_INPUTS = "decoder_inputs"
STATE = "state"
INITIAL_H = "initial_h"
INITIAL_C = "initial_c"
DECODER_LSTM = "decoder_lstm"
OUTPUT_DROPOUT = "output_dropout"
TOKEN_PROBS = "token_probs"

# Training only: the learned map of h that the near-duplicate loss scores (saved as search.npy, not a layer).
SEARCH_HEAD = "search_head"

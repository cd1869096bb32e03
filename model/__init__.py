"""The Keras LSTM sequence codec: build, batched encode/decode, train, save and load."""

"""The codec: a TensorFlow-free inference half (config, manifest, batches, engine, names, weights, codec, loader,
errors) and a Keras half that depends on it (layers, network, tf_engine, storage, train)."""

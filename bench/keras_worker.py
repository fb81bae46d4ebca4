"""Keras side of bench/bench_peer.py: run by a Python that has tensorflow-cpu (never xviz's).

    keras_worker.py [THREADS]     # THREADS: TensorFlow's intra-op threads (default: TensorFlow's choice)

Reads JSON commands on stdin, one per line, answers one JSON line each on stdout:

    {"cmd": "load", "size": S, "keras_file": PATH, "input": NPY}  -> {"logits": [...]}
    {"cmd": "time"}                                               -> {"seconds": t}

The model is ``keras.applications.Xception(weights=None, include_top=False)`` at S px with the
backbone weights of the kitchenware ``.keras`` file (the Keras ImageNet backbone) and its head
(GlobalAveragePooling2D -> Dense(100, relu) -> Dense(6); Dropout is inactive at inference), so both
sides compute the same function. It runs as Keras runs a model in production: ``tf.function``, fp32,
batch 1, TensorFlow's own oneDNN kernels and threads. Needs only keras, tensorflow and numpy.
"""

from __future__ import annotations

import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402


def build(size: int, keras_file: str) -> keras.Model:
    trained = keras.saving.load_model(keras_file, compile=False)
    backbone = keras.applications.Xception(weights=None, include_top=False, input_shape=(size, size, 3))
    backbone.set_weights(trained.get_layer("xception").get_weights())
    inputs = keras.Input((size, size, 3))
    x = keras.layers.GlobalAveragePooling2D()(backbone(inputs))
    x = trained.get_layer("dense_1")(trained.get_layer("dense")(x))
    return keras.Model(inputs, x)


def main() -> None:
    if len(sys.argv) > 1:  # a thread count: both frameworks then use that many (bench_peer --threads)
        tf.config.threading.set_intra_op_parallelism_threads(int(sys.argv[1]))
        tf.config.threading.set_inter_op_parallelism_threads(1)
    forward = x = None
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["cmd"] == "load":
            model = build(cmd["size"], cmd["keras_file"])
            x = tf.constant(np.load(cmd["input"]).transpose(0, 2, 3, 1))  # (1, 3, S, S) -> (1, S, S, 3)
            forward = tf.function(lambda t: model(t, training=False))
            for _ in range(3):  # trace, then let oneDNN pick its kernels
                out = forward(x).numpy()
            reply = {"logits": out[0].tolist(), "versions": f"keras {keras.__version__}, tensorflow {tf.__version__}"}
        elif cmd["cmd"] == "time":
            start = time.perf_counter()
            forward(x).numpy()
            reply = {"seconds": time.perf_counter() - start}
        else:
            reply = {"error": f"unknown command {cmd['cmd']!r}"}
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    main()

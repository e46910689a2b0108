"""Regenerates the format-detection fixtures next to this file, with the real frameworks.

Run with the loader environment's Python:  /var/lib/monitor/loader/bin/python make_fixtures.py
Every fixture is benign data; they are tiny on purpose.
"""

import os
import pickle
import shutil

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")

import cloudpickle
import dill
import joblib
import numpy as np
import safetensors.numpy
import torch

HERE = os.path.dirname(os.path.abspath(__file__))


def out(name):
    return os.path.join(HERE, name)


data = {"weights": [0.5, 1.5], "name": "tiny"}
for protocol in range(6):
    with open(out("protocol%d.pkl" % protocol), "wb") as f:
        pickle.dump(data, f, protocol=protocol)
with open(out("two.pkl"), "wb") as f:
    pickle.dump(data, f)
    pickle.dump([1, 2, 3], f)
with open(out("dill.pkl"), "wb") as f:
    dill.dump(lambda x: x + 1, f)
with open(out("cloudpickle.pkl"), "wb") as f:
    cloudpickle.dump(lambda x: x * 2, f)
array = np.arange(6, dtype=np.float32).reshape(2, 3)
joblib.dump({"array": array}, out("plain.joblib"))
joblib.dump({"array": array}, out("zlib.joblib"), compress=("zlib", 3))
np.save(out("array.npy"), array)
np.savez(out("arrays.npz"), a=array, b=np.zeros(2))
state = {"layer.weight": torch.zeros(2, 2), "layer.bias": torch.zeros(2)}
torch.save(state, out("state.pt"))
shutil.copy(out("state.pt"), out("state-renamed.bin"))
torch.save(state, out("legacy.pt"), _use_new_zipfile_serialization=False)
safetensors.numpy.save_file({"a": array, "b": np.zeros(3, dtype=np.int8)}, out("tensors.safetensors"))

import keras

model = keras.Sequential([keras.Input(shape=(2,)), keras.layers.Dense(1)])
model.save(out("dense.keras"))
model.save(out("dense.h5"))

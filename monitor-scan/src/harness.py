"""monitor's scan harness.

Loads one artifact with the framework a user would load it with, inside monitor's sandbox and
under its kernel watch, and reports on the control pipe which phase it is in:

  setup     the interpreter starts and imports the framework (judged: nothing)
  load      the framework loads the artifact (judged)
  exercise  with --exercise, the loaded model is called on dummy input (judged)
  linger    while anything the artifact left behind still runs (a thread, a child, a timer),
            the loader stays up, as a server would, for up to --linger-ms (judged)
  teardown  the harness returns; finalizers and the interpreter's exit run (judged)

Each message is one JSON line with `kind` and `t`, CLOCK_MONOTONIC in nanoseconds: the clock
the kernel stamps events with. A phase marker is written before the phase starts, so monitor
can place every event. Nothing named by the artifact is imported before `load`.

At the gate the harness says `ready` and waits; monitor opens the gate and starts the load
phase by its own clock. What the harness writes after that is a claim (the artifact's code runs
in this process and can write here too): monitor checks it against the order above.
"""

import json
import os
import sys
import threading
import time

EXIT_OK, EXIT_MISSING, EXIT_LOAD_FAILED, EXIT_EXERCISE_FAILED, EXIT_NOT_WATCHED = 0, 3, 4, 5, 6

# The audit events worth showing next to the syscalls they explain (--audit).
AUDITED = (
    "pickle.find_class",
    "exec",
    "compile",
    "marshal.loads",
    "os.system",
    "os.exec",
    "os.posix_spawn",
    "os.spawn",
    "os.fork",
    "subprocess.Popen",
    "pty.spawn",
    "socket.connect",
    "socket.getaddrinfo",
    "socket.sendto",
    "ctypes.dlopen",
    "ctypes.dlsym",
    "ctypes.call_function",
    "os.memfd_create",
    "os.chmod",
    "os.remove",
    "os.rename",
    "shutil.rmtree",
    "urllib.Request",
    "code.__new__",
    "builtins.input",
    "os.kill",
    "webbrowser.open",
    "import",
)
# Per event name, so that a flood of one kind (a payload can make thousands of imports or
# compiles) cannot use up the budget of the others. What is left out is counted.
MAX_AUDIT_MESSAGES_PER_EVENT = 500


class Control:
    """The write end of the control pipe; safe to use from any thread."""

    def __init__(self, fd):
        os.set_inheritable(fd, False)
        self._file = os.fdopen(fd, "w", buffering=1, encoding="utf-8", errors="replace")
        self._lock = threading.Lock()

    def say(self, kind, **fields):
        fields["kind"] = kind
        fields["t"] = time.monotonic_ns()
        line = json.dumps(fields, default=repr) + "\n"
        with self._lock:
            try:
                self._file.write(line)
            except (OSError, ValueError):
                pass  # monitor went away; the job is being torn down

    def phase(self, name):
        self.say("phase", phase=name)


def short(value, limit=300):
    try:
        text = repr(value)
    except Exception:  # a payload's __repr__ may raise; the evidence is still worth having
        text = "<unrepresentable %s>" % type(value).__name__
    return text if len(text) <= limit else text[:limit] + "..."


def audit_subject(event, args):
    """What rules match an audit event on: `module.name` of a global the unpickler resolves,
    else the first argument when it is text (a command, a URL, a library's name)."""
    if event == "pickle.find_class" and len(args) == 2:
        return "%s.%s" % (args[0], args[1])
    if args and isinstance(args[0], (str, bytes, os.PathLike)):
        return os.fsdecode(args[0])[:300]
    return None


def install_audit_hook(control):
    sent = {}
    globals_seen = set()
    dropped = [0]

    def hook(event, args):
        if not event.startswith(AUDITED):
            return
        try:
            subject = audit_subject(event, args)
        except Exception:  # a payload's object may make str() or fsdecode raise
            subject = None
        if event == "pickle.find_class":
            # Once per global: a pickle can name the same one a million times.
            if subject in globals_seen:
                return
            globals_seen.add(subject)
        count = sent.get(event, 0)
        if count >= MAX_AUDIT_MESSAGES_PER_EVENT:
            dropped[0] += 1
            if dropped[0] == 1:
                control.say("note", message="audit events beyond %d per kind are not sent"
                            % MAX_AUDIT_MESSAGES_PER_EVENT)
            return
        sent[event] = count + 1
        control.say("audit", event=event, args=short(args), subject=subject, pid=os.getpid())

    sys.addaudithook(hook)


# --- loaders: what a user would call -------------------------------------------------------

def load_pickles(path, load):
    """Every pickle in the file, in order (a file may hold several)."""
    objects = []
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        while True:
            objects.append(load(f))
            if f.tell() >= size:
                break
    return objects[0] if len(objects) == 1 else tuple(objects)


def import_framework(loader):
    """Imports what `loader` needs, in set-up, so that the load phase shows only the load."""
    if loader == "pickle":
        import pickle

        return lambda p: load_pickles(p, pickle.load)
    if loader == "dill":
        import dill

        return lambda p: load_pickles(p, dill.load)
    if loader == "cloudpickle":
        import cloudpickle

        return lambda p: load_pickles(p, cloudpickle.load)
    if loader == "joblib":
        import joblib
        import numpy  # noqa: F401  (joblib's arrays)

        return joblib.load
    if loader == "numpy":
        import numpy

        def load_numpy(p):
            loaded = numpy.load(p, allow_pickle=True)
            if hasattr(loaded, "files"):  # .npz: members load lazily, so touch each one
                with loaded:
                    return {name: loaded[name] for name in loaded.files}
            return loaded

        return load_numpy
    if loader == "torch":
        import torch

        return lambda p: torch.load(p, map_location="cpu", weights_only=False)
    if loader == "torchscript":
        import torch

        return lambda p: torch.jit.load(p, map_location="cpu")
    if loader == "keras":
        import keras

        return lambda p: keras.models.load_model(p, safe_mode=False)
    if loader == "tensorflow":
        import tensorflow as tf

        return tf.saved_model.load
    raise ValueError("unknown loader %r" % loader)


# --- exercise: call the model the way inference would ----------------------------------------

def dummy_for(obj):
    import numpy

    features = getattr(obj, "n_features_in_", None)
    if isinstance(features, int) and 0 < features < 1_000_000:
        return numpy.zeros((1, features))
    return numpy.zeros((1, 1))


def exercise_keras(model):
    import numpy

    shapes = model.input_shape if isinstance(model.input_shape, list) else [model.input_shape]
    inputs = [numpy.zeros([1 if d is None else d for d in shape]) for shape in shapes]
    model.predict(inputs if len(inputs) > 1 else inputs[0], verbose=0)


def exercise_savedmodel(obj):
    import tensorflow as tf

    called = 0
    for fn in getattr(obj, "signatures", {}).values():
        specs = fn.structured_input_signature[1]
        fn(**{
            name: tf.zeros([1 if d is None else d for d in spec.shape], spec.dtype)
            for name, spec in specs.items()
        })
        called += 1
    call = getattr(obj, "__call__", None)
    for concrete in getattr(call, "concrete_functions", []) if called == 0 else []:
        args = [
            tf.zeros([1 if d is None else d for d in spec.shape], spec.dtype)
            for spec in concrete.structured_input_signature[0]
        ]
        concrete(*args)


def exercise_torch(module):
    import torch

    first_linear = next((m for m in module.modules() if isinstance(m, torch.nn.Linear)), None)
    width = first_linear.in_features if first_linear is not None else 1
    module.eval()
    with torch.no_grad():
        module(torch.zeros(1, width))


def exercise_plan(loader, obj):
    """The calls that exercise `obj` as inference would, where its format runs code when it is
    called: a Keras model's predict, a SavedModel's signatures, torch modules, objects with
    `predict` or `__call__` (at the top, or one level into a dict, list or tuple). Empty when
    there is nothing to call (plain data, a state dict)."""
    if loader == "keras":
        return [lambda: exercise_keras(obj)]
    if loader == "tensorflow":
        return [lambda: exercise_savedmodel(obj)]
    candidates = [obj]
    if isinstance(obj, dict):
        candidates += list(dict.values(obj))
    elif isinstance(obj, (list, tuple)):
        candidates += list(obj)
    plan = []
    for candidate in candidates:
        if loader in ("torch", "torchscript"):
            import torch

            if isinstance(candidate, torch.nn.Module):
                plan.append(lambda c=candidate: exercise_torch(c))
                continue
        predict = getattr(candidate, "predict", None)
        if callable(predict):
            plan.append(lambda c=candidate, p=predict: p(dummy_for(c)))
        elif callable(candidate) and not isinstance(candidate, type):
            plan.append(lambda c=candidate: c(dummy_for(c)))
    return plan


# No framework writes data nested this deep (Python's own pickler stops near 1000 levels);
# past it, the artifact is made to crash whatever walks it next with a RecursionError.
MAX_NESTING = 10_000
CONTAINERS = (list, tuple, dict, set, frozenset)


def nesting_depth(obj, budget=2_000_000):
    """How deep plain containers nest in obj, counted without recursing (up to MAX_NESTING + 1,
    and over at most `budget` containers). Exact types only: a subclass's own methods would run
    artifact code here."""
    deepest, seen, todo = 0, set(), [(obj, 1)]
    while todo and budget > 0 and deepest <= MAX_NESTING:
        item, depth = todo.pop()
        if type(item) not in CONTAINERS or id(item) in seen:
            continue
        seen.add(id(item))
        budget -= 1
        deepest = max(deepest, depth)
        children = dict.values(item) if type(item) is dict else item
        todo.extend((child, depth + 1) for child in children if type(child) in CONTAINERS)
    return deepest


def describe_type(obj):
    kind = type(obj)
    return "%s.%s" % (kind.__module__, kind.__qualname__)


def parse_args(argv):
    opts = {"exercise": False, "audit": False, "linger_ms": "0"}
    it = iter(argv)
    for arg in it:
        if arg in ("--exercise", "--audit"):
            opts[arg[2:]] = True
        elif arg in ("--control-fd", "--gate-fd", "--loader", "--path", "--linger-ms"):
            opts[arg[2:].replace("-", "_")] = next(it)
        else:
            raise SystemExit("harness: unknown argument %r" % arg)
    opts["control_fd"] = int(opts["control_fd"])
    opts["gate_fd"] = int(opts["gate_fd"]) if "gate_fd" in opts else None
    opts["linger"] = int(opts["linger_ms"]) / 1000.0
    return opts


# --- linger: stay up while what the artifact left behind runs --------------------------------

def task_count():
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return 1


def still_running(baseline_tasks):
    """What could still act in this process if it stayed up: threads beyond those the
    frameworks started at import, child processes, armed timers. None when nothing could."""
    import signal

    tasks = task_count()
    if tasks > baseline_tasks:
        return "%d threads more than after the imports" % (tasks - baseline_tasks)
    try:
        for tid in os.listdir("/proc/self/task"):
            with open("/proc/self/task/%s/children" % tid) as f:
                if f.read().strip():
                    return "child processes"
    except OSError:
        pass
    for which in (signal.ITIMER_REAL, signal.ITIMER_VIRTUAL, signal.ITIMER_PROF):
        if signal.getitimer(which) != (0.0, 0.0):
            return "an interval timer"
    try:
        with open("/proc/self/timers") as f:
            if f.read().strip():
                return "a POSIX timer"
    except OSError:
        pass
    return None


def linger(control, seconds, baseline_tasks):
    """Stays up for up to `seconds` while anything the load left behind runs: a payload that
    acts a moment after the load, as it would in a server that keeps the model, is seen."""
    why = still_running(baseline_tasks)
    if why is None or seconds <= 0:
        return
    control.phase("linger")
    control.say("note", message="lingering up to %.1f s: %s" % (seconds, why))
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and still_running(baseline_tasks) is not None:
        time.sleep(0.05)


def wait_at_gate(fd):
    """Blocks until monitor lets us load the artifact (one byte on `fd`): its kernel probes
    may still be loading while we import the frameworks, and nothing of the artifact may be
    touched before they watch us. End of file means monitor gave up: do not load."""
    os.set_inheritable(fd, False)
    try:
        return os.read(fd, 1) == b"1"
    finally:
        os.close(fd)


def main(argv):
    opts = parse_args(argv)
    control = Control(opts["control_fd"])
    loader, path = opts["loader"], opts["path"]

    control.phase("setup")
    try:
        load = import_framework(loader)
    except ImportError as e:
        control.say("error", phase="setup", error=type(e).__name__, message=str(e),
                    missing=e.name or loader)
        return EXIT_MISSING
    if opts["audit"]:
        install_audit_hook(control)
    # The frameworks' own threads, started by their imports, do not keep the loader up later.
    baseline_tasks = task_count()

    if opts["gate_fd"] is not None:
        control.say("ready")
        if not wait_at_gate(opts["gate_fd"]):
            return EXIT_NOT_WATCHED

    control.phase("load")
    status = EXIT_OK
    try:
        obj = load(path)
    except BaseException as e:  # a payload may raise anything, SystemExit included
        control.say("error", phase="load", error=type(e).__name__, message=short(str(e), 2000))
        obj, status = None, EXIT_LOAD_FAILED
    if status == EXIT_OK and nesting_depth(obj) > MAX_NESTING:
        control.say("error", phase="load", error="NestingTooDeep",
                    message="the loaded data nests more than %d levels deep: made to crash "
                            "whatever reads it next" % MAX_NESTING)
        obj, status = None, EXIT_LOAD_FAILED
    if status == EXIT_OK:
        control.say("loaded", type=describe_type(obj))

    plan = []
    if status == EXIT_OK and opts["exercise"]:
        try:
            plan = exercise_plan(loader, obj)
        except BaseException as e:  # looking for `predict` may run the artifact's code
            plan = [lambda e=e: (_ for _ in ()).throw(e)]
    if plan:
        control.phase("exercise")
        try:
            for call in plan:
                call()
        except BaseException as e:
            # Best effort: a model that cannot take the dummy input is no failed scan.
            control.say("error", phase="exercise", error=type(e).__name__,
                        message=short(str(e), 2000))
            print("harness: exercising the model failed: %s: %s" % (type(e).__name__, e),
                  file=sys.stderr)
            status = EXIT_EXERCISE_FAILED

    # Even after a failed load: what the payload started may act later.
    linger(control, opts["linger"], baseline_tasks)
    control.phase("teardown")
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

"""Checks the corpus without monitor: loads every artifact the way `monitorctl scan` does, under
`strace -f`, and says whether what each one did matches its manifest entry.

    python3 corpus/verify_corpus.py [CORPUS_DIR] [--only TEXT] [--jobs N] [--keep]

A developer tool (root; not part of CI): it answers "does this payload fire under the scan's
loader?" before the kernel probes and rules are in the loop, so a corpus change can be checked
on its own. Each artifact is loaded by monitor's own harness (monitor-scan/src/
harness.py) with the loader environment's python, in a bubblewrap sandbox shaped like the
scan's: user nobody, network namespace with loopback only, private /tmp, the host read-only, a
decoy home of fake credentials at /home/user, a scratch copy of the artifact in /work. So the
payloads act only on throwaway directories, whatever they do.

The trace is judged from the harness's `load` phase marker on (framework imports before it do
not count), with strace's view of the default rules of high severity and above
(monitor-rules/src/default.yaml). Malicious entries must show every expected class;
benign ones none. Entries marked `exercise` are loaded twice: without --exercise they must stay
quiet (the payload fires only at inference), with it they must fire.
"""

import argparse
import concurrent.futures
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HARNESS = os.path.join(ROOT, "monitor-scan/src/harness.py")
NOBODY = 65534

LOADERS = {
    "pickle": "pickle", "joblib": "joblib", "dill": "dill", "cloudpickle": "cloudpickle",
    "numpy": "numpy", "numpy-archive": "numpy", "torch-zip": "torch", "torch-legacy": "torch",
    "keras": "keras", "hdf5": "keras", "savedmodel": "tensorflow",
    # safetensors is parsed natively by monitor: nothing to load.
}

TRACED = ("execve,execveat,connect,bind,sendto,sendmsg,socket,open,openat,openat2,creat,"
          "chmod,fchmod,fchmodat,rename,renameat,renameat2,link,linkat,symlink,symlinkat,"
          "memfd_create,ptrace,process_vm_readv,process_vm_writev,setuid,setgid,setreuid,"
          "setregid,setresuid,setresgid,capset,unshare,setns,mount,umount2,init_module,"
          "finit_module,delete_module,bpf,io_uring_setup,write")

# Runs the harness as a child subreaper and waits for every process it leaves behind, as
# monitor's sandbox helper does (monitor-jobs/src/sandbox/landlock.rs): bubblewrap's pid
# namespace dies with its first process, which would kill payloads that outlive the loader.
SUBREAPER = """
import ctypes, os, sys
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
main = os.fork()
if main == 0:
    os.execv(sys.argv[1], sys.argv[1:])
status = 0
while True:
    try:
        pid, wstatus = os.wait()
    except ChildProcessError:
        break
    if pid == main:
        status = os.waitstatus_to_exitcode(wstatus)
sys.exit(status if status >= 0 else 128 - status)
"""

# The sandbox's decoy home (monitor-jobs/src/sandbox/decoy.rs), with fake contents.
DECOYS = {
    ".ssh/id_rsa": "-----BEGIN OPENSSH PRIVATE KEY-----\nfake\n-----END OPENSSH PRIVATE KEY-----\n",
    ".aws/credentials": "[default]\naws_access_key_id = AKIAFAKEFAKEFAKE\n",
    ".netrc": "machine example.invalid login x password fake\n",
    ".cache/huggingface/token": "hf_fake",
    ".docker/config.json": "{}\n",
    ".bashrc": "# fake\n",
}

# Path globs of the default rules (high and above), as in default.yaml.
CREDENTIALS = ["**/.ssh/id_*", "**/.ssh/*_key", "**/.aws/credentials", "**/.aws/config",
               "**/.netrc", "**/.git-credentials", "**/.docker/config.json", "**/.kube/config",
               "**/.pypirc", "**/.huggingface/token", "**/.cache/huggingface/token",
               "**/.config/gcloud/**", "**/.azure/**", "/proc/*/environ"]
SENSITIVE = ["/etc/shadow", "/etc/gshadow", "/etc/sudoers", "/etc/sudoers.d/**",
             "/etc/ssh/ssh_host_*"]
PERSISTENCE = ["**/.bashrc", "**/.bash_profile", "**/.profile", "**/.zshrc",
               "**/.ssh/authorized_keys", "**/.config/autostart/**", "**/.config/systemd/**",
               "/etc/cron*/**", "/etc/crontab", "/var/spool/cron/**", "/etc/systemd/**",
               "/etc/profile.d/**", "/etc/ld.so.preload", "/etc/rc.local"]
FILELESS = ["/proc/*/fd/*", "/dev/fd/*", "/proc/self/fd/*", "memfd:*"]
WRITE_FLAGS = ("O_WRONLY", "O_RDWR", "O_CREAT", "O_TRUNC", "O_APPEND")
OPENS = ("open", "openat", "openat2", "creat")
SETID = ("setuid", "setgid", "setreuid", "setregid", "setresuid", "setresgid")
ALWAYS_HIGH = {
    "ptrace": "priv.ptrace", "process_vm_readv": "priv.ptrace",
    "process_vm_writev": "priv.ptrace", "capset": "priv.capabilities",
    "unshare": "priv.namespaces", "setns": "priv.namespaces", "mount": "kernel.mount",
    "umount2": "kernel.mount", "init_module": "kernel.module", "finit_module": "kernel.module",
    "delete_module": "kernel.module", "bpf": "kernel.bpf", "io_uring_setup": "kernel.io-uring",
}


def glob_regex(pattern):
    """The rules' globs: `**` crosses directories, `*` stays in one."""
    out = ""
    for i, part in enumerate(pattern.split("**")):
        out += (".*" if i else "") + "".join(
            "[^/]*" if c == "*" else re.escape(c) for c in part)
    return re.compile(out + r"\Z")


def matcher(patterns):
    regexes = [glob_regex(p) for p in patterns]
    return lambda path: any(r.match(path) for r in regexes)


is_credential, is_sensitive = matcher(CREDENTIALS), matcher(SENSITIVE)
is_persistence, is_fileless = matcher(PERSISTENCE), matcher(FILELESS)


# --- strace output -> events ------------------------------------------------------------------

LINE = re.compile(r"^(\d+) +[\d.]+ (.*)$")
CALL = re.compile(r"^(\w+)\((.*)\) += (.*)$")
RESUMED = re.compile(r"^<\.\.\. (\w+) resumed>(.*)$")
PHASE = re.compile(r'^write\(\d+, "\{\\"phase\\": \\"(\w+)\\"')


def events(trace_text):
    """(pid, syscall, args, result) for each finished call, and the phases in order, as an
    event index where each began."""
    pending, out, phases = {}, [], []
    for line in trace_text.splitlines():
        m = LINE.match(line)
        if not m:
            continue
        pid, rest = m.groups()
        if rest.endswith("<unfinished ...>"):
            pending[pid] = rest[: -len("<unfinished ...>")].rstrip()
            continue
        r = RESUMED.match(rest)
        if r:
            rest = pending.pop(pid, r.group(1) + "(") + r.group(2)
        phase = PHASE.match(rest)
        if phase:
            phases.append((phase.group(1), len(out)))
            continue
        c = CALL.match(rest)
        if c:
            out.append((pid, c.group(1), c.group(2), c.group(3)))
    return out, phases


def first_string(args):
    m = re.search(r'"((?:[^"\\]|\\.)*)"', args)
    return m.group(1) if m else ""


def mode_of(args):
    m = re.search(r"\b0([0-7]{3,4})\s*$", args)
    return int(m.group(1), 8) if m else 0


def rules_hit(syscall, args, result):
    """The default rules of high severity and above that this call matches."""
    hits = set()
    if syscall in ("execve", "execveat"):
        if result.startswith("0"):
            hits.add("exec.program")
        if is_fileless(first_string(args)) or "AT_EMPTY_PATH" in args:
            hits.add("exec.fileless")
    elif syscall in ("connect", "sendto", "sendmsg", "bind"):
        if re.search(r"sa_family=AF_INET6?\b", args):
            hits.add({"connect": "net.connect", "bind": "net.listen"}.get(syscall, "net.send"))
            if re.search(r"sin6?_port=htons\(53\)", args) and syscall in ("connect", "sendto"):
                hits.add("net.dns")
    elif syscall == "socket" and "AF_PACKET" in args:
        hits.add("net.raw-socket")
    elif syscall in OPENS:
        path = first_string(args)
        if not path.startswith("/"):
            path = "/work/" + path
        if is_credential(path):
            hits.add("cred.read")
        if is_sensitive(path):
            hits.add("file.sensitive-read")
        writes = syscall == "creat" or any(f in args for f in WRITE_FLAGS)
        if writes and is_persistence(path):
            hits.add("persist.write")
        if (syscall == "creat" or "O_CREAT" in args) and mode_of(args) & 0o111:
            hits.add("file.executable-written")
    elif syscall in ("chmod", "fchmod", "fchmodat"):
        if mode_of(args) & 0o111:
            hits.add("file.executable-created")
    elif syscall.startswith(("rename", "link", "symlink")):
        if any(is_persistence(p) for p in re.findall(r'"((?:[^"\\]|\\.)*)"', args)):
            hits.add("persist.rename-or-link")
    elif syscall in SETID and result.startswith("0"):
        hits.add("priv.setid")
    elif syscall in ALWAYS_HIGH:
        hits.add(ALWAYS_HIGH[syscall])
    return hits


def judged(trace_text):
    """Rule ids hit from the load phase on, and the phases seen."""
    evs, phases = events(trace_text)
    start = next((i for name, i in phases if name == "load"), None)
    if start is None:
        return None, [p for p, _ in phases]
    hits = set()
    for _pid, syscall, args, result in evs[start:]:
        hits |= rules_hit(syscall, args, result)
    return hits, [p for p, _ in phases]


# --- one load in the sandbox ------------------------------------------------------------------

def sandboxed_load(python, artifact, loader, exercise, keep):
    """Loads `artifact` under strace in a scan-like sandbox; returns the trace's text."""
    scratch = tempfile.mkdtemp(prefix="monitor-verify-")
    try:
        home, work, tools = (os.path.join(scratch, d) for d in ("home", "work", "tools"))
        for rel, content in DECOYS.items():
            path = os.path.join(home, rel)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as f:
                f.write(content)
        os.makedirs(work)
        name = os.path.basename(artifact.rstrip("/"))
        copy = shutil.copytree if os.path.isdir(artifact) else shutil.copy
        copy(artifact, os.path.join(work, name))
        os.makedirs(tools)
        shutil.copy(HARNESS, os.path.join(tools, "harness.py"))
        for d in (home, work):
            for dirpath, dirnames, filenames in os.walk(d):
                for n in [dirpath] + [os.path.join(dirpath, x) for x in dirnames + filenames]:
                    os.lchown(n, NOBODY, NOBODY)
        os.chmod(scratch, 0o755)

        control = os.open("/dev/null", os.O_WRONLY)
        trace = os.path.join(scratch, "trace")
        cmd = ["strace", "-f", "-ttt", "-s", "256", "-o", trace, "-e", "trace=" + TRACED,
               "/usr/bin/setpriv", "--reuid=%d" % NOBODY, "--regid=%d" % NOBODY, "--clear-groups", "--",
               "/usr/bin/bwrap", "--unshare-all", "--die-with-parent", "--new-session",
               "--ro-bind", "/", "/", "--dev", "/dev", "--proc", "/proc"]
        for private in ("/tmp", "/var/tmp", "/dev/shm", "/run", "/home", "/root"):
            cmd += ["--tmpfs", private]
        cmd += ["--bind", home, "/home/user", "--bind", work, "/work",
                "--ro-bind", tools, "/run/monitor", "--clearenv",
                "--setenv", "PATH", "/usr/local/bin:/usr/bin:/bin", "--setenv", "HOME",
                "/home/user", "--setenv", "USER", "user", "--setenv", "TMPDIR", "/tmp",
                "--setenv", "SHELL", "/bin/sh", "--setenv", "TF_CPP_MIN_LOG_LEVEL", "2",
                "--setenv", "KERAS_BACKEND", "tensorflow", "--setenv", "CUDA_VISIBLE_DEVICES",
                "", "--setenv", "HF_HUB_OFFLINE", "1", "--setenv", "LANG", "C.UTF-8",
                "--chdir", "/work", "--", python, "-c", SUBREAPER, python, "/run/monitor/harness.py",
                "--control-fd", str(control), "--loader", loader, "--path", "/work/" + name]
        if exercise:
            cmd.append("--exercise")
        try:
            run = subprocess.run(cmd, pass_fds=(control,), stdin=subprocess.DEVNULL,
                                 capture_output=True, timeout=180)
        finally:
            os.close(control)
        with open(trace) as f:
            text = f.read()
        if keep:
            kept = os.path.join(keep, name + (".exercise" if exercise else "") + ".strace")
            shutil.copy(trace, kept)
        return text, run.returncode, run.stderr.decode(errors="replace")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def check_safetensors(path):
    """Monitor parses safetensors itself and runs nothing: check the header is what it
    expects (a little-endian u64 length, then JSON whose tensors lie inside the file)."""
    with open(path, "rb") as f:
        data = f.read()
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + size])
    body = len(data) - 8 - size
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    if not tensors or any(v["data_offsets"][1] > body for v in tensors.values()):
        return "FAIL", "tensor offsets outside the file"
    return "ok", "header of %d tensors parsed (nothing runs)" % len(tensors)


def verify(entry, corpus, python, keep):
    """A line of verdict for one manifest entry, and whether it holds."""
    artifact = os.path.join(corpus, entry["file"])
    loader = LOADERS.get(entry["format"])
    if entry["format"] == "safetensors":
        return check_safetensors(artifact)
    if loader is None:
        return "FAIL", "unknown format %r" % entry["format"]
    expect = set(entry["expect"])
    problems, notes = [], []
    runs = [False, True] if entry["exercise"] else [False]
    for exercise in runs:
        text, status, stderr = sandboxed_load(python, artifact, loader, exercise, keep)
        hits, phases = judged(text)
        if hits is None:
            tail = stderr.strip().splitlines()[-1:] or ["no output"]
            problems.append("never reached the load phase (exit %d: %s)" % (status, tail[0]))
            continue
        classes = {h.split(".")[0] for h in hits}
        label = "with --exercise" if exercise else "load only"
        notes.append("%s: %s" % (label, ",".join(sorted(hits)) or "-"))
        if entry["kind"] == "benign":
            if hits:
                problems.append("high findings on a benign artifact: %s" % sorted(hits))
        elif exercise or not entry["exercise"]:
            missing = expect - classes
            if missing:
                problems.append("%s: no %s" % (label, ",".join(sorted(missing))))
        elif expect & classes:
            problems.append("fires at load already, yet marked exercise")
        if status not in (0, 4, 5) and entry["kind"] == "benign":
            problems.append("harness exit %d: %s" % (status, stderr.strip()[-300:]))
    if problems:
        return "FAIL", "; ".join(problems + notes)
    return "ok", "; ".join(notes)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("corpus", nargs="?", default=os.path.join(ROOT, "target/corpus"))
    parser.add_argument("--python", default=os.path.join(
        os.environ.get("MONITOR_LOADER_ENV", "/var/lib/monitor/loader"), "bin/python"))
    parser.add_argument("--only", help="only entries whose file contains this text")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--keep", metavar="DIR", help="keep the strace outputs in DIR")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("verify_corpus: run as root (strace of a sandbox that switches to nobody)")
    for tool in ("strace", "bwrap", "setpriv"):
        if shutil.which(tool) is None:
            sys.exit("verify_corpus: %s is missing" % tool)
    if args.keep:
        os.makedirs(args.keep, exist_ok=True)
    with open(os.path.join(args.corpus, "manifest.json")) as f:
        manifest = [e for e in json.load(f) if not args.only or args.only in e["file"]]

    started = time.monotonic()
    counts = {}
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        futures = {pool.submit(verify, e, args.corpus, args.python, args.keep): e
                   for e in manifest}
        for future in concurrent.futures.as_completed(futures):
            entry = futures[future]
            try:
                verdict, detail = future.result()
            except Exception as e:  # one broken entry should not hide the others' results
                verdict, detail = "FAIL", "%s: %s" % (type(e).__name__, e)
            counts[verdict] = counts.get(verdict, 0) + 1
            print("%-4s %-50s %-8s %s" % (verdict, entry["file"],
                                         ",".join(entry["expect"]) or "-", detail), flush=True)
    print("verify_corpus: %s of %d entries in %.0f s" % (
        ", ".join("%d %s" % (n, v) for v, n in sorted(counts.items())), len(manifest),
        time.monotonic() - started))
    sys.exit(1 if counts.get("FAIL") else 0)


if __name__ == "__main__":
    main()

"""Checks the shipping files that cannot be run here (no container engine, no cluster, systemd
not PID 1) as far as they can be checked without running them:

- dist/Dockerfile, parsed with dockerfile-parse: the stages line up (every --from names an
  earlier stage, the Python stages share one base), every COPY source from the build context
  exists in the repository and is not excluded by .dockerignore, the loader environment is
  installed where and as xtask installs it, the image's entry point is a binary it copies in.
- dist/kubernetes/*.yaml: every document validated (strictly: unknown fields are errors)
  against the Kubernetes JSON schemas that kubernetes-validate bundles; the DaemonSet has
  what monitord needs on a node; its ConfigMap's monitord.toml is accepted by monitord itself,
  and the ports, paths and image tag agree with it and with the workspace.
- dist/monitord.service: `systemd-analyze verify` prints nothing, and none of its directives
  installs a seccomp filter over a syscall monitor traces.

Each check is first run on a copy with a planted defect, which it must report: a checker that
cannot fail proves nothing. Run by `cargo xtask test` through xtask/src/dist_check.rs.
"""

import argparse
import copy
import fnmatch
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib

import kubernetes_validate
import yaml
from dockerfile_parse import DockerfileParser


class Checks:
    """Collects failures instead of stopping at the first."""

    def __init__(self):
        self.failures = []
        self.passed = 0

    def expect(self, ok, message):
        if ok:
            self.passed += 1
        else:
            self.failures.append(message)


# ---- Dockerfile ----------------------------------------------------------------------------


def dockerignore_patterns(root):
    path = os.path.join(root, ".dockerignore")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        lines = [line.strip() for line in f]
    return [line.rstrip("/") for line in lines if line and not line.startswith("#")]


def ignored(rel, patterns):
    """Whether .dockerignore leaves `rel` (or a directory above it) out of the context."""
    parts = rel.split("/")
    for i in range(1, len(parts) + 1):
        prefix = "/".join(parts[:i])
        for pattern in patterns:
            if fnmatch.fnmatch(prefix, pattern) or fnmatch.fnmatch(
                prefix, pattern.removeprefix("**/")
            ):
                return True
    return False


def copy_args(value):
    """COPY's flags and its sources and destination (JSON or shell form)."""
    words = json.loads(value) if value.lstrip().startswith("[") else value.split()
    flags = {}
    rest = []
    for word in words:
        if word.startswith("--") and not rest:
            key, _, val = word[2:].partition("=")
            flags[key] = val
        else:
            rest.append(word)
    return flags, rest[:-1], rest[-1]


def check_dockerfile(checks, text, root, loader_dir, loader_stamp):
    parser = DockerfileParser(fileobj=io.BytesIO(text.encode()))
    instructions = [i for i in parser.structure if i["instruction"] != "COMMENT"]
    stages = []  # (name, base)
    bases = iter(parser.parent_images)
    patterns = dockerignore_patterns(root)
    stage_text = {}  # a stage's instructions, joined: what it does
    for ins in instructions:
        kind, value = ins["instruction"], ins["value"]
        line = ins["startline"] + 1
        if kind == "FROM":
            match = re.match(r"\S+(?:\s+AS\s+(\S+))?$", value.strip(), re.IGNORECASE)
            checks.expect(match is not None, f"Dockerfile:{line}: cannot read FROM {value!r}")
            name = match.group(1) if match and match.group(1) else str(len(stages))
            base = next(bases)
            checks.expect("$" not in base, f"Dockerfile:{line}: FROM {base}: an ARG undeclared")
            stages.append((name, base))
            stage_text[name] = []
            continue
        # Only ARGs (for FROM lines) may come before the first stage.
        checks.expect(
            bool(stages) or kind == "ARG", f"Dockerfile:{line}: {kind} before the first FROM"
        )
        if not stages:
            continue
        stage_text[stages[-1][0]].append(value)
        if kind in ("COPY", "ADD"):
            flags, sources, _dest = copy_args(value)
            if "from" in flags:
                earlier = [name for name, _ in stages[:-1]]
                checks.expect(
                    flags["from"] in earlier,
                    f"Dockerfile:{line}: COPY --from={flags['from']} names no earlier stage "
                    f"(stages before it: {earlier})",
                )
                continue
            for src in sources:
                rel = os.path.normpath(src).lstrip("/")
                if rel == ".":
                    continue
                checks.expect(
                    os.path.exists(os.path.join(root, rel)),
                    f"Dockerfile:{line}: COPY source {src} is not in the repository",
                )
                checks.expect(
                    not ignored(rel, patterns),
                    f"Dockerfile:{line}: COPY source {src} is excluded by .dockerignore",
                )
    names = [name for name, _ in stages]
    checks.expect(
        {"build", "loader", "runtime"} <= set(names) and names[-1] == "runtime",
        f"Dockerfile: stages {names}: want build, loader and runtime, runtime last",
    )
    base = dict(stages)
    checks.expect(
        base.get("loader") == base.get("runtime"),
        f"Dockerfile: the loader environment is built on {base.get('loader')} but runs on "
        f"{base.get('runtime')}: its Python would not be there",
    )
    # The binaries link against the build stage's glibc: the runtime's must be that release's.
    codename = r"(bookworm|trixie|bullseye|forky)"
    releases = {name: re.findall(codename, b) for name, b in stages}
    checks.expect(
        releases.get("build") and releases.get("build") == releases.get("runtime"),
        f"Dockerfile: built on {base.get('build')}, run on {base.get('runtime')}: "
        "not one Debian release",
    )
    loader_steps = " ".join(stage_text.get("loader", []))
    for want in (f"venv {loader_dir}", "--no-deps", "loader/requirements.txt", loader_stamp):
        checks.expect(
            want in loader_steps,
            f"Dockerfile: the loader stage lacks `{want}` (see loader_env.rs)",
        )
    build_steps = " ".join(stage_text.get("build", []))
    checks.expect(
        "cargo xtask build" in build_steps,
        "Dockerfile: the build stage does not run `cargo xtask build`",
    )
    entry = [i for i in instructions if i["instruction"] == "ENTRYPOINT"]
    checks.expect(len(entry) == 1, "Dockerfile: want exactly one ENTRYPOINT")
    if entry:
        program = json.loads(entry[0]["value"])[0]
        copied = any(
            i["instruction"] == "COPY" and "/usr/local/bin" in i["value"] for i in instructions
        )
        checks.expect(
            program == "monitord" and copied,
            f"Dockerfile: ENTRYPOINT {program} is not the monitord copied into /usr/local/bin",
        )


# Libraries of Debian's essential packages (libc6, libgcc-s1), in every Debian image.
BASE_LIBRARIES = {
    "linux-vdso.so.1",
    "libc.so.6",
    "libm.so.6",
    "libgcc_s.so.1",
    "ld-linux-x86-64.so.2",
    # Merged into libc.so.6 since glibc 2.34, still shipped by libc6: binaries linked against
    # glibc 2.28 (the release's, see xtask/src/cross.rs) name them.
    "libdl.so.2",
    "libpthread.so.0",
}


def check_binaries(checks, binaries):
    """The runtime image installs no libraries for the binaries: they must need none more."""
    for binary in binaries:
        out = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True)
        lines = [line.split() for line in out.stdout.splitlines() if line.strip()]
        needed = {os.path.basename(words[0]) for words in lines}
        extra = needed - BASE_LIBRARIES
        checks.expect(
            not extra,
            f"{os.path.basename(binary)} needs {sorted(extra)}, not in the runtime image",
        )


# ---- Kubernetes ----------------------------------------------------------------------------


def validate_schema(checks, docs, kube_version, source):
    for doc in docs:
        what = f"{source}: {doc.get('kind')}/{doc.get('metadata', {}).get('name')}"
        try:
            kubernetes_validate.validate(doc, kube_version, strict=True)
            checks.expect(True, what)
        except kubernetes_validate.ValidationError as e:
            path = ".".join(str(p) for p in e.path)
            checks.expect(False, f"{what}: {path}: {e.message}")
        except (
            kubernetes_validate.SchemaNotFoundError,
            kubernetes_validate.InvalidSchemaError,
        ) as e:
            checks.expect(False, f"{what}: {e.message}")


def monitord_config(monitord, text):
    """What monitord makes of `text`: its --print-config, parsed; or its error."""
    with tempfile.NamedTemporaryFile("w", suffix=".toml") as f:
        f.write(text)
        f.flush()
        out = subprocess.run(
            [monitord, "--print-config", "--config", f.name], capture_output=True, text=True
        )
    if out.returncode != 0:
        return None, out.stderr.strip()
    return tomllib.loads(out.stdout), None


def check_daemonset(checks, docs, monitord, version):
    by_kind = {}
    for doc in docs:
        by_kind.setdefault(doc.get("kind"), []).append(doc)
    daemonsets = by_kind.get("DaemonSet", [])
    checks.expect(len(daemonsets) == 1, "kubernetes: want exactly one DaemonSet")
    if len(daemonsets) != 1:
        return
    ds = daemonsets[0]
    namespace = ds["metadata"].get("namespace")
    checks.expect(
        any(n["metadata"]["name"] == namespace for n in by_kind.get("Namespace", [])),
        f"kubernetes: the DaemonSet's namespace {namespace} is not created",
    )
    pod = ds["spec"]["template"]
    spec = pod["spec"]
    checks.expect(spec.get("hostPID") is True, "DaemonSet: hostPID is not true")
    accounts = [a["metadata"]["name"] for a in by_kind.get("ServiceAccount", [])]
    checks.expect(
        spec.get("serviceAccountName") in accounts,
        f"DaemonSet: service account {spec.get('serviceAccountName')} is not created",
    )
    containers = spec["containers"]
    checks.expect(len(containers) == 1, "DaemonSet: want one container")
    c = containers[0]
    checks.expect(
        c.get("securityContext", {}).get("privileged") is True, "DaemonSet: not privileged"
    )
    checks.expect(
        c["image"].endswith(f":{version}"),
        f"DaemonSet: image {c['image']} is not this release ({version})",
    )
    checks.expect("livenessProbe" in c, "DaemonSet: no liveness probe")
    volumes = {v["name"]: v for v in spec.get("volumes", [])}
    mounts = {m["mountPath"]: m["name"] for m in c.get("volumeMounts", [])}

    def host_path_at(mount_path):
        volume = volumes.get(mounts.get(mount_path), {})
        return volume.get("hostPath", {}).get("path")

    # The configuration the pod runs with, as monitord reads it.
    args = c.get("command", []) + c.get("args", [])
    config_path = args[args.index("--config") + 1] if "--config" in args else None
    checks.expect(config_path is not None, "DaemonSet: monitord is not given --config")
    config_dir = os.path.dirname(config_path or "/")
    config_volume = volumes.get(mounts.get(config_dir), {})
    map_name = config_volume.get("configMap", {}).get("name")
    maps = {m["metadata"]["name"]: m for m in by_kind.get("ConfigMap", [])}
    checks.expect(
        map_name in maps,
        f"DaemonSet: {config_dir} is not mounted from one of the ConfigMaps {list(maps)}",
    )
    if map_name not in maps:
        return
    text = maps[map_name].get("data", {}).get(os.path.basename(config_path))
    checks.expect(text is not None, f"ConfigMap {map_name}: no {os.path.basename(config_path)}")
    config, error = monitord_config(monitord, text or "")
    checks.expect(config is not None, f"ConfigMap {map_name}: monitord refuses it: {error}")
    if config is None:
        return

    for path in ("/sys/fs/bpf", "/sys/kernel/tracing", "/sys/fs/cgroup"):
        checks.expect(host_path_at(path) == path, f"DaemonSet: the host's {path} is not mounted")
    state = config["state_dir"]
    socket_dir = os.path.dirname(config["socket"])
    checks.expect(
        host_path_at(state) == state, f"DaemonSet: the state directory {state} is not the host's"
    )
    checks.expect(
        host_path_at(socket_dir) == socket_dir,
        f"DaemonSet: the socket's directory {socket_dir} is not the host's",
    )
    listen = config.get("metrics_listen")
    checks.expect(listen is not None, f"ConfigMap {map_name}: no metrics_listen to scrape")
    port = listen.rsplit(":", 1)[1] if listen else None
    annotations = pod["metadata"].get("annotations", {})
    checks.expect(
        annotations.get("prometheus.io/scrape") == "true"
        and annotations.get("prometheus.io/port") == port
        and annotations.get("prometheus.io/path") == "/metrics",
        f"DaemonSet: the Prometheus annotations {annotations} do not point at {listen}/metrics",
    )
    ports = [p["containerPort"] for p in c.get("ports", [])]
    checks.expect(
        port is not None and int(port) in ports,
        f"DaemonSet: the metrics port {port} is not among the container's ports {ports}",
    )
    for rules in config.get("rules", []):
        checks.expect(
            rules in mounts or os.path.dirname(rules) in mounts,
            f"ConfigMap {map_name}: rules at {rules} are not mounted",
        )


# ---- systemd -------------------------------------------------------------------------------

# Directives that install a seccomp filter over syscalls monitor traces: a payload's attempt
# would be refused before its tracepoint fires, and go unseen (dist/monitord.service says why).
BLINDING_DIRECTIVES = (
    "SystemCallFilter",
    "RestrictNamespaces",
    "RestrictAddressFamilies",
    "RestrictSUIDSGID",
    "MemoryDenyWriteExecute",
    "ProtectKernelModules",
)


def unit_settings(text):
    settings = {}
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")) and "=" in line:
            key, _, value = line.partition("=")
            settings[key.strip()] = value.strip()
    return settings


def check_unit(checks, text, monitord):
    settings = unit_settings(text)
    for key in BLINDING_DIRECTIVES:
        checks.expect(
            key not in settings, f"monitord.service: {key}= would hide the syscalls it refuses"
        )
    checks.expect(settings.get("NoNewPrivileges") == "yes", "monitord.service: NoNewPrivileges")
    checks.expect(
        settings.get("SystemCallArchitectures") == "native",
        "monitord.service: compat syscalls (unseen by the tracepoints) are not refused",
    )
    exec_start = settings.get("ExecStart", "").split()
    checks.expect(bool(exec_start), "monitord.service: no ExecStart")
    if not exec_start:
        return
    # A root of its own: the unit as installed (its binary where ExecStart says, the
    # distribution's units it refers to), so that verify checks this file and nothing else.
    with tempfile.TemporaryDirectory() as root:
        units = os.path.join(root, "etc/systemd/system")
        os.makedirs(units)
        shutil.copytree(
            "/usr/lib/systemd/system",
            os.path.join(root, "usr/lib/systemd/system"),
            symlinks=True,
        )
        binary = os.path.join(root, exec_start[0].lstrip("/"))
        os.makedirs(os.path.dirname(binary), exist_ok=True)
        shutil.copy(monitord, binary)
        with open(os.path.join(units, "monitord.service"), "w") as f:
            f.write(text)
        out = subprocess.run(
            ["systemd-analyze", "verify", f"--root={root}", "--man=no", "monitord.service"],
            capture_output=True,
            text=True,
        )
    report = (out.stdout + out.stderr).strip()
    checks.expect(
        out.returncode == 0 and not report,
        f"monitord.service: systemd-analyze verify: {report or out.returncode}",
    )


def exposure(unit_path):
    """systemd-analyze security's overall exposure (0 safest .. 10), for the log."""
    out = subprocess.run(
        ["systemd-analyze", "security", "--offline=yes", "--no-pager", unit_path],
        capture_output=True,
        text=True,
    )
    match = re.search(r"Overall exposure level for \S+: ([\d.]+) (\w+)", out.stdout)
    return f"{match.group(1)} {match.group(2)}" if match else "unknown"


# ---- planted defects -----------------------------------------------------------------------


def must_fail(name, run):
    checks = Checks()
    run(checks)
    if not checks.failures:
        sys.exit(f"dist-check: the {name} check did not catch its planted defect")


def self_test(args, dockerfile, docs, unit):
    root, monitord = args.root, args.monitord
    must_fail(
        "Dockerfile COPY",
        lambda c: check_dockerfile(
            c, dockerfile + "\nCOPY no/such/file /x\n", root, args.loader_dir, args.loader_stamp
        ),
    )
    must_fail(
        "Dockerfile stage",
        lambda c: check_dockerfile(
            c,
            dockerfile.replace("--from=loader", "--from=lodaer"),
            root,
            args.loader_dir,
            args.loader_stamp,
        ),
    )
    must_fail(
        "Dockerfile release",
        lambda c: check_dockerfile(
            c,
            dockerfile.replace("rust:1.95-bookworm", "rust:1.95-trixie"),
            root,
            args.loader_dir,
            args.loader_stamp,
        ),
    )
    must_fail(
        "Dockerfile loader",
        lambda c: check_dockerfile(
            c, dockerfile.replace("--no-deps", ""), root, args.loader_dir, args.loader_stamp
        ),
    )
    must_fail("binaries' libraries", lambda c: check_binaries(c, ["/usr/bin/python3"]))
    bad = copy.deepcopy(docs)
    for doc in bad:
        if doc["kind"] == "DaemonSet":
            doc["spec"]["template"]["spec"]["hostPid"] = True
    for version in args.kubernetes_version:
        must_fail("Kubernetes schema", lambda c: validate_schema(c, bad, version, "planted"))
    bad = copy.deepcopy(docs)
    for doc in bad:
        if doc["kind"] == "ConfigMap":
            for key in doc.get("data", {}):
                doc["data"][key] = 'metrics_listen = "0.0.0.0:9464"\n'
    must_fail("ConfigMap", lambda c: check_daemonset(c, bad, monitord, args.version))
    must_fail(
        "systemd verify",
        lambda c: check_unit(c, unit.replace("ProtectClock=", "ProtectClok="), monitord),
    )
    filtered = unit.replace("NoNewPrivileges=yes", "NoNewPrivileges=yes\nSystemCallFilter=@mount")
    must_fail("systemd seccomp", lambda c: check_unit(c, filtered, monitord))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--root", required=True, help="the repository (the build context)")
    ap.add_argument("--monitord", required=True)
    ap.add_argument("--version", required=True, help="the workspace's version")
    ap.add_argument("--loader-dir", required=True)
    ap.add_argument("--loader-stamp", required=True)
    ap.add_argument("--kubernetes-version", required=True, nargs="+")
    args = ap.parse_args()

    def read(rel):
        with open(os.path.join(args.root, rel)) as f:
            return f.read()

    dockerfile = read("dist/Dockerfile")
    unit = read("dist/monitord.service")
    manifest_dir = os.path.join(args.root, "dist/kubernetes")
    docs, sources = [], []
    for name in sorted(os.listdir(manifest_dir)):
        if name.endswith((".yaml", ".yml")):
            for doc in yaml.safe_load_all(read(f"dist/kubernetes/{name}")):
                if doc is not None:
                    docs.append(doc)
                    sources.append(name)

    self_test(args, dockerfile, docs, unit)
    checks = Checks()
    check_dockerfile(checks, dockerfile, args.root, args.loader_dir, args.loader_stamp)
    monitorctl = os.path.join(os.path.dirname(args.monitord), "monitorctl")
    check_binaries(checks, [args.monitord, monitorctl])
    for version in args.kubernetes_version:
        for doc, source in zip(docs, sources):
            validate_schema(checks, [doc], version, source)
    check_daemonset(checks, docs, args.monitord, args.version)
    check_unit(checks, unit, args.monitord)
    for failure in checks.failures:
        print(f"dist-check: FAIL {failure}", file=sys.stderr)
    if checks.failures:
        sys.exit(1)
    print(
        f"dist-check: {checks.passed} checks passed: dist/Dockerfile, {len(docs)} Kubernetes "
        f"documents (schemas of Kubernetes {', '.join(args.kubernetes_version)}, strict), "
        f"dist/monitord.service (systemd-analyze verify; exposure "
        f"{exposure(os.path.join(args.root, 'dist/monitord.service'))}); each check caught its "
        "planted defect"
    )


if __name__ == "__main__":
    main()

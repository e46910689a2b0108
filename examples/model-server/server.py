"""A small, ordinary PyTorch model server: what monitord's live watch must live with.

It does what real inference servers do, and nothing else:

- at start it reads its cloud credentials (an AWS-style ~/.aws/credentials, as an SDK does)
  to sign its requests to the model store, runs `uname` once to log the host, fetches its
  model over HTTP from the store (as from S3), and loads it with
  `torch.load(..., weights_only=True)`;
- it starts an inference worker with multiprocessing's `spawn` method (as CUDA needs; spawn
  executes a fresh Python), listens on a loopback port and serves `POST /predict`;
- it appends one line per request to its log, rotated by size (RotatingFileHandler);
- every few seconds a health check executes a program (`df`, the free space of its model
  cache), and `GET /health` answers the orchestrator;
- a while after start it fetches a second model from the store and swaps it in;
- `POST /reload {"path": FILE}` loads a model file it is told to (an operator's hot swap);
  `"full_model": true` loads a whole pickled model, `weights_only=False`: only for files
  from a source you trust, which is exactly what a watch is for.

Run with a Python that has torch (monitord's loader env has one):

    python3 -m http.server --bind 127.0.0.1 --directory models 9000 &   # the "store"
    /var/lib/monitor/loader/bin/python server.py --store http://127.0.0.1:9000 \
        --model model-a.pt --port 8080 --state /var/lib/model-server

`server.py make-models DIR` writes two small models (model-a.pt, model-b.pt) for the store.
SIGTERM shuts it down cleanly (a service restart).
"""

import argparse
import configparser
import hashlib
import hmac
import json
import logging
import logging.handlers
import multiprocessing
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import torch

FEATURES = 4

log = logging.getLogger("model-server")


def make_model(seed):
    torch.manual_seed(seed)
    return torch.nn.Linear(FEATURES, 1)


def make_models(directory):
    """Writes model-a.pt and model-b.pt (state dicts of a linear model) into `directory`."""
    out = pathlib.Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    for seed, name in [(1, "model-a.pt"), (2, "model-b.pt")]:
        torch.save(make_model(seed).state_dict(), out / name)


def credentials():
    """The store's access key, from the AWS-style credentials file an SDK would read."""
    path = pathlib.Path(
        os.environ.get("AWS_SHARED_CREDENTIALS_FILE", pathlib.Path.home() / ".aws" / "credentials")
    )
    config = configparser.ConfigParser()
    config.read(path)
    section = config[os.environ.get("AWS_PROFILE", "default")]
    return section["aws_access_key_id"], section.get("aws_secret_access_key", "")


def fetch(store, name, cache, keys):
    """Downloads `name` from the store into the cache, with a signed request."""
    key_id, secret = keys
    signature = hmac.new(secret.encode(), name.encode(), hashlib.sha256).hexdigest()
    request = urllib.request.Request(
        f"{store}/{name}", headers={"Authorization": f"HMAC {key_id}:{signature}"}
    )
    target = cache / name
    partial = target.with_suffix(target.suffix + ".part")
    with urllib.request.urlopen(request, timeout=10) as response, open(partial, "wb") as out:
        shutil.copyfileobj(response, out)
    os.replace(partial, target)
    log.info("fetched %s (%d bytes)", name, target.stat().st_size)
    return target


def load_weights(path):
    model = make_model(0)
    model.load_state_dict(torch.load(path, weights_only=True))
    model.eval()
    return model


def worker(path, requests, answers):
    """The inference worker (a spawned process): its own copy of the model."""
    model = load_weights(path)
    for job in iter(requests.get, None):
        kind, value = job
        if kind == "swap":
            model = load_weights(value)
            answers.put(("swapped", str(value)))
            continue
        with torch.no_grad():
            answers.put(("y", model(torch.tensor([value], dtype=torch.float32)).item()))


class Server:
    def __init__(self, args):
        self.args = args
        self.cache = pathlib.Path(args.state) / "models"
        self.cache.mkdir(parents=True, exist_ok=True)
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.model_name = args.model
        self.served = 0

    def start(self):
        keys = credentials()
        host = subprocess.run(["uname", "-srm"], capture_output=True, text=True, check=True)
        log.info("host %s", host.stdout.strip())
        path = fetch(self.args.store, self.args.model, self.cache, keys)
        self.model = load_weights(path)
        context = multiprocessing.get_context("spawn")
        self.requests, self.answers = context.Queue(), context.Queue()
        self.worker = context.Process(
            target=worker, args=(path, self.requests, self.answers), daemon=True
        )
        self.worker.start()
        self.http = ThreadingHTTPServer(("127.0.0.1", self.args.port), handler(self))
        threading.Thread(target=self.health_checks, daemon=True).start()
        if self.args.second_model:
            threading.Thread(target=self.second_model, args=(keys,), daemon=True).start()
        log.info("serving %s on 127.0.0.1:%d", self.model_name, self.args.port)

    def serve(self):
        self.http.serve_forever(poll_interval=0.2)
        self.requests.put(None)
        self.worker.join(timeout=5)
        log.info("stopped after %d requests", self.served)

    def stop(self, *_):
        if not self.stopping.is_set():
            self.stopping.set()
            threading.Thread(target=self.http.shutdown).start()

    def predict(self, x):
        with self.lock:
            self.requests.put(("x", x))
            _, y = self.answers.get(timeout=10)
            self.served += 1
            return y

    def swap(self, path, full_model=False):
        """Loads the model file at `path` and serves it from now on."""
        with self.lock:
            if full_model:
                # A whole pickled nn.Module: this runs whatever the file says.
                model = torch.load(path, weights_only=False)
                if isinstance(model, torch.nn.Module):
                    path = self.cache / "reloaded.pt"
                    torch.save(model.state_dict(), path)
            self.model = load_weights(path)
            self.requests.put(("swap", path))
            self.answers.get(timeout=30)
            self.model_name = pathlib.Path(path).name
        log.info("now serving %s", self.model_name)

    def health_checks(self):
        """Every few seconds: the model cache's free space, as an ops team's probe does."""
        while not self.stopping.wait(self.args.health_every):
            df = subprocess.run(["df", "-P", str(self.cache)], capture_output=True, text=True)
            free_kb = int(df.stdout.splitlines()[-1].split()[3]) if df.returncode == 0 else -1
            alive = self.worker.is_alive()
            log.info("health: worker %s, %d KiB free", "up" if alive else "DOWN", free_kb)

    def second_model(self, keys):
        """A while after start, the next model version from the store."""
        if self.stopping.wait(self.args.second_after):
            return
        path = fetch(self.args.store, self.args.second_model, self.cache, keys)
        self.swap(path)


def handler(server):
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/health":
                return self.reply(200, {"ok": server.worker.is_alive(), "model": server.model_name})
            self.reply(404, {"error": "no such route"})

        def do_POST(self):
            try:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                if self.path == "/predict":
                    return self.reply(200, {"y": server.predict(body["x"])})
                if self.path == "/reload":
                    server.swap(body["path"], body.get("full_model", False))
                    return self.reply(200, {"model": server.model_name})
                self.reply(404, {"error": "no such route"})
            except Exception as e:  # a bad request is answered, never fatal
                log.warning("%s failed: %s", self.path, e)
                self.reply(400, {"error": str(e)})

        def reply(self, status, body):
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, fmt, *args):
            log.info("%s %s", self.address_string(), fmt % args)

    return Handler


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command")
    models = sub.add_parser("make-models", help="write model-a.pt and model-b.pt into DIR")
    models.add_argument("dir")
    parser.add_argument("--store", default="http://127.0.0.1:9000", help="the model store's URL")
    parser.add_argument("--model", default="model-a.pt", help="the model to serve at start")
    parser.add_argument("--second-model", help="a model fetched and swapped in later")
    parser.add_argument("--second-after", type=float, default=30, help="seconds after start")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("--state", default="/var/lib/model-server", help="cache and log dir")
    parser.add_argument("--health-every", type=float, default=5, help="seconds")
    parser.add_argument("--log-bytes", type=int, default=1 << 20, help="rotate the log past this")
    args = parser.parse_args()
    if args.command == "make-models":
        return make_models(args.dir)
    pathlib.Path(args.state).mkdir(parents=True, exist_ok=True)
    rotating = logging.handlers.RotatingFileHandler(
        pathlib.Path(args.state) / "server.log", maxBytes=args.log_bytes, backupCount=3
    )
    logging.basicConfig(
        level=logging.INFO,
        format="%(asctime)s %(levelname)s %(message)s",
        handlers=[rotating, logging.StreamHandler(sys.stderr)],
    )
    server = Server(args)
    signal.signal(signal.SIGTERM, server.stop)
    signal.signal(signal.SIGINT, server.stop)
    server.start()
    server.serve()


if __name__ == "__main__":
    main()

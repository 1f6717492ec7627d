# A workload in another namespace, as an attacker (or an ordinary client) inside the cluster has one:
# GET /dial?url=[&header=Name: value...] dials once and answers with the HTTP status (and the body,
# if JSON) or the connection error by name; /load/start?url=&rate= opens a new connection per request
# at that rate until /load/stop, which returns how many were sent and what came back.
# Run by test/realnode/dialler.ts as `python -c`.
import collections
import http.server
import json
import threading
import time
import urllib.error
import urllib.parse
import urllib.request


def dial(url, headers=()):
    request = urllib.request.Request(url, headers=dict(h.split(": ", 1) for h in headers))
    try:
        with urllib.request.urlopen(request, timeout=3) as answer:
            return str(answer.status), answer.read()
    except urllib.error.HTTPError as answer:
        return str(answer.code), answer.read()
    except Exception as failure:
        return type(getattr(failure, "reason", failure)).__name__, b""


def parsed(body):
    try:
        return json.loads(body)
    except ValueError:
        return None


class Load:
    def __init__(self, url, rate):
        self.url, self.rate, self.sent = url, rate, 0
        self.answers, self.lock, self.stopping = collections.Counter(), threading.Lock(), threading.Event()
        self.workers = []
        self.thread = threading.Thread(target=self.run)
        self.thread.start()

    def run(self):
        due = time.monotonic()
        while not self.stopping.is_set():
            worker = threading.Thread(target=self.one)
            worker.start()
            self.workers.append(worker)
            self.sent += 1
            due += 1 / self.rate
            time.sleep(max(0, due - time.monotonic()))

    def one(self):
        answer, _ = dial(self.url)
        with self.lock:
            self.answers[answer] += 1

    def stop(self):
        self.stopping.set()
        self.thread.join()
        for worker in self.workers:
            worker.join()
        return {"sent": self.sent, "answers": dict(self.answers)}


load = None


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        global load
        target = urllib.parse.urlsplit(self.path)
        lists = urllib.parse.parse_qs(target.query)
        query = {k: v[0] for k, v in lists.items()}
        if target.path == "/dial":
            answer, body = dial(query["url"], lists.get("header", []))
            result = {"answer": answer, "body": parsed(body)}
        elif target.path == "/load/start":
            load = Load(query["url"], float(query["rate"]))
            result = {}
        elif target.path == "/load/stop":
            result, load = load.stop(), None
        else:
            self.send_error(404)
            return
        body = json.dumps(result).encode()
        self.send_response(200)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


http.server.ThreadingHTTPServer(("0.0.0.0", 9000), Handler).serve_forever()

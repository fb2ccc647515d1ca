"""Denial-of-service checks of `protloc serve` (issue #15): stalled clients, pixel bombs, huge bodies.

Each scenario starts a fresh `protloc serve` subprocess on an untrained run of the default
backbone (``tf_efficientnet_lite0``, 128 px, built here) and measures it from outside:

1. **stalled clients**: 100 sockets that send half a request head (``GET /health HTTP/1.1`` and
   one header, never the blank line) and hold it; a socket the server closes is reopened at once,
   so 100 stay in flight for ``--stall-seconds``. Meanwhile ``GET /health`` is probed every 0.25 s
   on a fresh connection: status codes and latency (ms).
2. **pixel bomb**: one request of 48 small PNGs (~100 kB each, ~5 MB in all) that each declare
   6000x6000 RGB pixels; then, on a fresh server, 8 clients at once each sending 2 such PNGs (a
   request that fits the per-request budget). Peak RSS (``VmHWM`` of the server process, from
   /proc) before and after.
3. **huge body**: a 300 MB chunked upload (no Content-Length) against the 100 MB request limit:
   status, seconds to the answer and the server's peak RSS.

``--src DIR`` serves the code in DIR (e.g. the main checkout's ``src`` for a before/after table);
give it twice to compare side by side.

Usage::

    python benchmarks/bench_web_abuse.py                                  # this checkout, ~2-3 min
    python benchmarks/bench_web_abuse.py --src /old/src --src src --out benchmarks/results/web_abuse.json
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import select
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def proc_status(pid: int) -> dict:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(("VmHWM", "VmRSS")):
                out[line.split(":")[0]] = int(line.split()[1]) / 1024  # MB
    return out


class Server:
    """`protloc serve RUN` from the code in ``src`` in a subprocess; waits for /health."""

    def __init__(self, src: Path, run: Path, *extra: str):
        self.port = free_port()
        env = dict(os.environ, PYTHONPATH=str(src), OMP_NUM_THREADS="1")
        code = "import sys; from protloc.cli.main import main; sys.exit(main())"
        self.proc = subprocess.Popen([sys.executable, "-c", code, "serve", str(run), "--port", str(self.port),
                                      "--threads", "1", *extra], env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        self.url = f"http://127.0.0.1:{self.port}"
        deadline = time.time() + 120
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.proc.stderr.read().decode()[-2000:]}")
            try:
                if health(self.url, timeout=2)[0] == 200:
                    break
            except OSError:
                pass
            if time.time() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.3)

    def mem(self) -> dict:
        return proc_status(self.proc.pid)

    def stop(self):
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def health(url: str, *, timeout: float = 5.0) -> tuple[int, float]:
    """(status, ms) of GET /health on a fresh connection; status 0 when the connection failed."""
    import http.client

    host, port = url.split("//")[1].split(":")
    t0 = time.perf_counter()
    c = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        c.request("GET", "/health")
        r = c.getresponse()
        r.read()
        return r.status, 1000 * (time.perf_counter() - t0)
    except OSError:
        return 0, 1000 * (time.perf_counter() - t0)
    finally:
        c.close()


def summarise(probes) -> dict:
    codes: dict = {}
    for status, _ in probes:
        codes[str(status)] = codes.get(str(status), 0) + 1
    ok = sorted(ms for status, ms in probes if status == 200)
    q = (lambda p: round(ok[min(len(ok) - 1, int(p * len(ok)))], 1)) if ok else (lambda p: None)
    return {"probes": len(probes), "status_counts": codes, "ok_fraction": round(len(ok) / max(1, len(probes)), 3),
            "latency_ms_p50": q(0.5), "latency_ms_p95": q(0.95), "latency_ms_max": round(ok[-1], 1) if ok else None}


# --------------------------------------------------------------------------------------------
def stalled_clients(srv: Server, *, n: int, seconds: float) -> dict:
    """Hold ``n`` half-sent request heads (reopening any the server closes) while probing /health."""
    head = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n"  # no blank line: the head never ends
    socks: dict = {}
    opened, closed_by_server, lifetimes = 0, 0, []
    stop = threading.Event()

    def open_one():
        nonlocal opened
        s = socket.socket()
        s.settimeout(5)
        try:
            s.connect(("127.0.0.1", srv.port))
            s.sendall(head)
        except OSError:
            s.close()
            return
        s.setblocking(False)
        socks[s] = time.perf_counter()
        opened += 1

    def attacker():
        nonlocal closed_by_server
        while not stop.is_set():
            while len(socks) < n and not stop.is_set():
                open_one()
            readable, _, _ = select.select(list(socks), [], [], 0.05) if socks else ([], [], [])
            for s in readable:
                try:
                    data = s.recv(4096)
                except OSError:
                    data = b""
                if not data or b"HTTP/1.1" in data:  # closed (or answered) by the server
                    lifetimes.append(time.perf_counter() - socks.pop(s))
                    closed_by_server += 1
                    s.close()

    t = threading.Thread(target=attacker, daemon=True)
    t.start()
    time.sleep(1.0)  # let the attacker fill its sockets
    probes, t0 = [], time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        probes.append(health(srv.url, timeout=5))
        time.sleep(0.25)
    stop.set()
    t.join(5)
    for s in list(socks):
        s.close()
    out = {"stalled_connections": n, "seconds": seconds, "attacker_opened": opened,
           "closed_by_server": closed_by_server,
           "stalled_lifetime_s_median": round(statistics.median(lifetimes), 2) if lifetimes else None,
           **summarise(probes)}
    out["after_attack"] = summarise([health(srv.url) for _ in range(5)])
    return out


def png_bomb(side: int = 6000) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (side, side)).save(buf, "PNG", optimize=True)
    return buf.getvalue()


def post_files(url: str, files, *, timeout: float = 600) -> tuple[int, str, float]:
    import httpx

    t0 = time.perf_counter()
    try:
        r = httpx.post(url + "/predict", files=[("files", f) for f in files], timeout=timeout)
        return r.status_code, r.text[:300], time.perf_counter() - t0
    except httpx.HTTPError as e:
        return 0, f"{type(e).__name__}: {e}", time.perf_counter() - t0


def warm_server(src: Path, run: Path) -> tuple[Server, dict]:
    """A fresh server after one small prediction (model loaded), and its memory then."""
    from PIL import Image

    srv = Server(src, run)
    small = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 80, 30)).save(small, "PNG")
    post_files(srv.url, [("warm.png", small.getvalue(), "image/png")])
    m = srv.mem()
    return srv, {"idle_rss_mb": round(m["VmRSS"], 0), "idle_peak_rss_mb": round(m["VmHWM"], 0)}


def pixel_bomb(src: Path, run: Path, *, n: int, side: int, clients: int, per_request: int) -> dict:
    bomb = png_bomb(side)
    out = {"png_bytes_each": len(bomb), "declared": f"{side}x{side} RGB"}
    srv, idle = warm_server(src, run)
    try:
        status, text, sec = post_files(srv.url, [(f"b{i}.png", bomb, "image/png") for i in range(n)])
        m = srv.mem()
        out["one_request"] = {**idle, "files": n, "request_mb": round(n * len(bomb) / 2**20, 1), "status": status,
                              "seconds": round(sec, 2), "answer": text, "peak_rss_mb": round(m["VmHWM"], 0),
                              "rss_after_mb": round(m["VmRSS"], 0), "health_after": health(srv.url)[0]}
    finally:
        srv.stop()
    srv, idle = warm_server(src, run)  # a fresh process: VmHWM is a lifetime peak
    try:
        results = []

        def client(k):
            results.append(post_files(srv.url, [(f"c{k}_{i}.png", bomb, "image/png") for i in range(per_request)]))

        t0 = time.perf_counter()
        threads = [threading.Thread(target=client, args=(k,)) for k in range(clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        m = srv.mem()
        codes: dict = {}
        for status, _, _ in results:
            codes[str(status)] = codes.get(str(status), 0) + 1
        out["concurrent"] = {**idle, "clients": clients, "files_per_request": per_request, "status_counts": codes,
                             "seconds": round(time.perf_counter() - t0, 1), "peak_rss_mb": round(m["VmHWM"], 0),
                             "rss_after_mb": round(m["VmRSS"], 0),
                             "answers": sorted({t[:160] for s, t, _ in results if s != 200}),
                             "health_after": health(srv.url)[0]}
    finally:
        srv.stop()
    return out


def huge_body(src: Path, run: Path, *, mb: int) -> dict:
    import httpx

    srv = Server(src, run)
    try:
        base = srv.mem()["VmHWM"]
        chunk = b"x" * (1 << 20)
        boundary = b"bench"

        def body():
            yield b"--" + boundary + b'\r\nContent-Disposition: form-data; name="files"; filename="big.png"\r\n'
            yield b"Content-Type: image/png\r\n\r\n"
            for _ in range(mb):
                yield chunk
            yield b"\r\n--" + boundary + b"--\r\n"

        t0 = time.perf_counter()
        try:
            r = httpx.post(srv.url + "/predict", content=body(), timeout=120,
                           headers={"content-type": "multipart/form-data; boundary=bench"})
            status, text = r.status_code, r.text[:200]
        except httpx.HTTPError as e:
            status, text = 0, f"{type(e).__name__}: {e}"
        sec = time.perf_counter() - t0
        m = srv.mem()
        return {"body_mb": mb, "chunked": True, "status": status, "answer": text, "seconds": round(sec, 2),
                "peak_rss_before_mb": round(base, 0), "peak_rss_mb": round(m["VmHWM"], 0),
                "health_after": health(srv.url)[0]}
    finally:
        srv.stop()


def bench(src: Path, run: Path, args) -> dict:
    print(f"[{src}] stalled clients", flush=True)
    srv = Server(src, run)
    try:
        stalled = stalled_clients(srv, n=args.stalled, seconds=args.stall_seconds)
    finally:
        srv.stop()
    print(f"[{src}] pixel bomb", flush=True)
    bomb = pixel_bomb(src, run, n=48, side=6000, clients=8, per_request=2)
    print(f"[{src}] huge body", flush=True)
    body = huge_body(src, run, mb=args.body_mb)
    return {"src": str(src), "stalled": stalled, "pixel_bomb": bomb, "huge_body": body}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--src", action="append", default=None, help="code to serve (default: this checkout's src)")
    ap.add_argument("--stalled", type=int, default=100)
    ap.add_argument("--stall-seconds", type=float, default=15.0)
    ap.add_argument("--body-mb", type=int, default=300)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "web_abuse.json"))
    args = ap.parse_args(argv)
    from bench_predict import make_run

    srcs = [Path(s).resolve() for s in (args.src or [ROOT / "src"])]
    t0 = time.time()
    load_start = [round(v, 2) for v in os.getloadavg()]
    with tempfile.TemporaryDirectory() as d:
        run = make_run(Path(d) / "run", backbone="tf_efficientnet_lite0", size=128)
        rows = [bench(src, run, args) for src in srcs]
    for r in rows:
        s, b, h = r["stalled"], r["pixel_bomb"], r["huge_body"]
        print(f"\n== {r['src']}")
        print(f"  {s['stalled_connections']} stalled: /health {s['status_counts']} p50 {s['latency_ms_p50']} ms, "
              f"max {s['latency_ms_max']} ms; stalled sockets closed by the server: {s['closed_by_server']} "
              f"(median life {s['stalled_lifetime_s_median']} s)")
        one, many = b["one_request"], b["concurrent"]
        print(f"  48 x 6000^2 PNG: status {one['status']} in {one['seconds']} s, peak RSS {one['idle_peak_rss_mb']:.0f} "
              f"-> {one['peak_rss_mb']:.0f} MB; {many['clients']} clients x {many['files_per_request']}: "
              f"{many['status_counts']}, peak RSS {many['idle_peak_rss_mb']:.0f} -> {many['peak_rss_mb']:.0f} MB")
        print(f"  {h['body_mb']} MB chunked body: status {h['status']} in {h['seconds']} s, peak RSS "
              f"{h['peak_rss_before_mb']:.0f} -> {h['peak_rss_mb']:.0f} MB")
    result = {"benchmark": "web_abuse", "date": time.strftime("%Y-%m-%d %H:%M:%S"),
              "machine": {"platform": platform.platform(), "python": platform.python_version(),
                          "cpu_count": os.cpu_count(), "load_average_at_start": load_start,
                          "load_average_at_end": [round(v, 2) for v in os.getloadavg()],
                          "note": "shared machine: other processes compete for the cores"},
              "server": "protloc serve (defaults, --threads 1) on an untrained tf_efficientnet_lite0 run, 128 px",
              "rows": rows, "total_seconds": round(time.time() - t0, 1)}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Bounded load test of ``instyle serve`` over loopback, through Gradio's client API.

    python benchmarks/load_test.py                          # tiny random checkpoint, 50 requests, 8 at a time
    python benchmarks/load_test.py --config quickstart      # the 256-px quickstart model instead
    python benchmarks/load_test.py --checkpoint psp_ffhq_encode.pt --requests 100 --concurrency 16

Starts the server in a subprocess on a free 127.0.0.1 port, warms it up, then sends
``--requests`` reconstruct requests from ``--concurrency`` client threads. Reports failed
requests, latency percentiles (wall time per request, queueing included), throughput, and the
server's resident memory (RSS) after warm-up and after the load. Exit code 1 when any request
failed. Only loopback addresses are ever contacted.
"""

from __future__ import annotations

import argparse
import importlib.resources as resources
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    """Resident memory of a process in MiB (psutil, or /proc on Linux)."""
    try:
        import psutil

        return psutil.Process(pid).memory_info().rss / 2**20
    except ImportError:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise


def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile ``q`` in [0, 100]."""
    xs = sorted(values)
    k = (len(xs) - 1) * q / 100
    lo, hi = int(k), min(int(k) + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def start_server(checkpoint: str, port: int, workdir: Path, concurrency: int) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "instyle.cli.main", "serve", "-c", checkpoint, "--port", str(port)]
    cmd += ["--concurrency", str(concurrency), "--queue-size", "256"]
    env = {**os.environ, "GRADIO_TEMP_DIR": str(workdir / "gradio")}
    log = open(workdir / "server.log", "w")  # noqa: SIM115 (lives as long as the server)
    return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 180.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with code {proc.returncode}")
        try:
            with urllib.request.urlopen(url + "healthz", timeout=2) as r:
                return json.loads(r.read())
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"the server was not ready after {timeout:.0f} s")


def run_load(url: str, image: str, n_requests: int, concurrency: int) -> tuple[list[float], list[str]]:
    from gradio_client import Client, handle_file

    local = threading.local()

    def one(_: int) -> tuple[float | None, str | None]:
        if not hasattr(local, "client"):
            local.client = Client(url, verbose=False)
        t0 = time.perf_counter()
        try:
            out, _, latent = local.client.predict(None, handle_file(image), False, api_name="/reconstruct")
            if not (os.path.getsize(out) > 0 and os.path.getsize(latent) > 0):
                return None, "empty output file"
        except Exception as e:  # a failed request is a result here, not a crash
            return None, f"{type(e).__name__}: {e}"
        return time.perf_counter() - t0, None

    latencies, errors = [], []
    with ThreadPoolExecutor(concurrency) as pool:
        for lat, err in pool.map(one, range(n_requests)):
            (errors.append(err) if err else latencies.append(lat))
    return latencies, errors


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", help="checkpoint to serve (default: a generated random-weight --config model)")
    p.add_argument("--config", default="tiny", help="registered config of the generated model (default: tiny)")
    p.add_argument("--image", help="photo to send (default: the bundled astronaut.png)")
    p.add_argument("--requests", type=int, default=50, help="requests to send (default: 50)")
    p.add_argument("--concurrency", type=int, default=8, help="client threads (default: 8)")
    p.add_argument("--server-concurrency", type=int, default=1, help="server's model slots (default: 1)")
    p.add_argument("--warmup", type=int, default=3, help="requests before measuring (default: 3)")
    p.add_argument("--rounds", type=int, default=1, help="repeat the load; RSS is reported after each (default: 1)")
    p.add_argument("--json", help="also write the results to this JSON file")
    args = p.parse_args(argv)
    if args.requests < 1 or args.concurrency < 1:
        p.error("--requests and --concurrency must be >= 1")

    image = args.image or str(resources.files("instyle") / "assets" / "astronaut.png")
    with tempfile.TemporaryDirectory(prefix="instyle-load-") as tmp:
        work = Path(tmp)
        checkpoint = args.checkpoint
        if checkpoint is None:
            from instyle.models import get_config
            from instyle.models.init import random_psp

            checkpoint = str(work / args.config)
            random_psp(get_config(args.config), seed=0).save_pretrained(checkpoint)
        port = free_port()
        url = f"http://127.0.0.1:{port}/"
        proc = start_server(checkpoint, port, work, args.server_concurrency)
        try:
            health = wait_ready(url, proc)
            _, warm_errors = run_load(url, image, args.warmup, 1)
            if warm_errors:
                print(f"warm-up failed: {warm_errors[0]}", file=sys.stderr)
                return 1
            rss_before = rss_mb(proc.pid)
            latencies, errors, rss_rounds = [], [], []
            t0 = time.perf_counter()
            for _ in range(max(args.rounds, 1)):
                lat, err = run_load(url, image, args.requests, args.concurrency)
                latencies += lat
                errors += err
                rss_rounds.append(rss_mb(proc.pid))
            wall = time.perf_counter() - t0
            rss_after = rss_rounds[-1]
        except RuntimeError as e:
            print(f"load test: {e}\n{(work / 'server.log').read_text()[-2000:]}", file=sys.stderr)
            return 1
        finally:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()

    result = {
        "model": health["models"][0],
        "device": health["device"],
        "requests": args.requests * max(args.rounds, 1),
        "client_concurrency": args.concurrency,
        "server_concurrency": args.server_concurrency,
        "failed": len(errors),
        "errors": sorted(set(errors))[:5],
        "latency_s": {
            "p50": percentile(latencies, 50),
            "p90": percentile(latencies, 90),
            "p99": percentile(latencies, 99),
            "max": max(latencies),
            "mean": statistics.fmean(latencies),
        }
        if latencies
        else {},
        "throughput_rps": len(latencies) / wall,
        "wall_s": wall,
        "rss_mb": {"before": rss_before, "after": rss_after, "delta": rss_after - rss_before, "after_each_round": rss_rounds},
    }
    lat = result["latency_s"]
    m = result["model"]
    print(f"model {m['name']} ({m['task']}, {m['input_size']} px in, {m['output_size']} px out) on {result['device']}")
    print(f"{result['requests']} requests, {args.concurrency} client threads, {args.server_concurrency} server slot(s)")
    print(f"failed: {result['failed']}" + (f"  e.g. {result['errors'][0]}" if errors else ""))
    if lat:
        print(
            f"latency s: p50 {lat['p50']:.3f}  p90 {lat['p90']:.3f}  p99 {lat['p99']:.3f}  max {lat['max']:.3f}  "
            f"(mean {lat['mean']:.3f}); throughput {result['throughput_rps']:.2f} req/s over {wall:.1f} s"
        )
    rounds = "" if len(rss_rounds) < 2 else "  (after each round: " + ", ".join(f"{r:.1f}" for r in rss_rounds) + ")"
    print(f"server RSS MiB: before {rss_before:.1f}  after {rss_after:.1f}  delta {rss_after - rss_before:+.1f}{rounds}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())

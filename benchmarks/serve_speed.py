"""Throughput and latency of `foodcls serve` over loopback: single /predict requests per second with
p50/p99 latency, and /predict/batch rows per second. Starts the server (uvicorn, N workers) on a free
port, loads it for a few seconds from keep-alive connections, stops it.

The load comes from a small asyncio HTTP/1.1 client in this process (one request in flight per
connection); on a 2-core machine it shares the CPU with the server, so the figures are a floor.

    python benchmarks/serve_speed.py [--checkpoint PATH] [--seconds 5] [--connections 16] [--workers 1]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request_bytes(path: str, body: bytes) -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


async def connection(port: int, payload: bytes, until: float, latencies: list[float]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.perf_counter() < until:
            start = time.perf_counter()
            writer.write(payload)
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
            await reader.readexactly(length)
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(head.split(b"\r\n")[0].decode())
            latencies.append(time.perf_counter() - start)
    finally:
        writer.close()


async def load(port: int, payload: bytes, seconds: float, connections: int) -> list[float]:
    latencies: list[float] = []
    until = time.perf_counter() + seconds
    await asyncio.gather(*(connection(port, payload, until, latencies) for _ in range(connections)))
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--batch", type=int, default=10_000)
    args = parser.parse_args()
    port = free_port()
    command = [sys.executable, "-m", "foodcls", "serve", "--port", str(port), "--workers", str(args.workers)]
    if args.checkpoint:
        command += ["--checkpoint", args.checkpoint]
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=REPO)
    try:
        for _ in range(100):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        single = request_bytes("/predict", json.dumps({"protein": 20, "carbs": 1, "fat": 12, "additives": 2}).encode())
        products = [{"protein": 20, "carbs": 1, "fat": 12, "additives": 2}, {"protein": 3.5, "carbs": 14, "fat": 3, "additives": 1}]
        batch = request_bytes("/predict/batch", json.dumps({"products": products * (args.batch // 2)}).encode())
        asyncio.run(load(port, single, 1.0, args.connections))  # warm-up
        latencies = asyncio.run(load(port, single, args.seconds, args.connections))
        batch_latencies = asyncio.run(load(port, batch, args.seconds, 2))
    finally:
        server.terminate()
        server.wait(timeout=10)
    latencies.sort()
    print(f"/predict: {len(latencies) / args.seconds:,.0f} requests/s over {args.connections} keep-alive connections, "
          f"{args.workers} worker(s); latency p50 {statistics.median(latencies) * 1000:.2f} ms, "
          f"p99 {latencies[int(0.99 * (len(latencies) - 1))] * 1000:.2f} ms")
    print(f"/predict/batch ({args.batch:,} products): {len(batch_latencies) * args.batch / args.seconds:,.0f} rows/s, "
          f"p50 {statistics.median(batch_latencies) * 1000:.1f} ms per request")


if __name__ == "__main__":
    main()

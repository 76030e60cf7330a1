"""
Throughput of the sandbox API server (RealisticEmulator) at 1,000 objects.

Runs the emulator in its own thread (as the sandbox and the operator tests do) and drives it over
HTTP with an aiohttp client at a fixed concurrency, then prints requests/second per operation::

    .venv/bin/python bench/bench_emulator.py [--objects 1000] [--concurrency 8]

Operations: create ConfigMaps, get them by name, merge-patch them, list them with a label selector
(each list returns 1/10 of the objects), create and validate custom resources against a CRD with
CEL rules, and resume a watch from a recent resourceVersion (which must not replay everything).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections.abc import Awaitable, Callable

import aiohttp

from kubemu.server import ApiServerThread

CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "widgets.bench.dev"},
    "spec": {
        "group": "bench.dev",
        "scope": "Namespaced",
        "names": {"plural": "widgets", "singular": "widget", "kind": "Widget"},
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "x-kubernetes-validations": [
                                    {
                                        "rule": "self.size <= 5 || self.mode == 'scale'",
                                        "message": "size > 5 requires mode=scale",
                                    }
                                ],
                                "properties": {
                                    "size": {"type": "integer", "default": 1},
                                    "mode": {
                                        "type": "string",
                                        "enum": ["patch", "scale"],
                                        "default": "patch",
                                    },
                                    "version": {"type": "string", "pattern": "^[0-9.]+$"},
                                },
                            },
                            "status": {"type": "object", "x-kubernetes-preserve-unknown-fields": True},
                        },
                    }
                },
            }
        ],
    },
}


async def timed(label: str, count: int, concurrency: int, fn: Callable[[int], Awaitable[None]]) -> float:
    semaphore = asyncio.Semaphore(concurrency)

    async def one(index: int) -> None:
        async with semaphore:
            await fn(index)

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(count)))
    elapsed = time.perf_counter() - started
    print(f"{label:<34} {count:>6} requests  {elapsed:7.2f} s  {count / elapsed:8.0f} req/s", flush=True)
    return elapsed


async def run(url: str, objects: int, concurrency: int) -> None:
    base = f"{url}/api/v1/namespaces/default/configmaps"
    widgets = f"{url}/apis/bench.dev/v1/namespaces/default/widgets"
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, raise_for_status=True) as session:

        async def create(i: int) -> None:
            body = {
                "metadata": {"name": f"cm-{i:05d}", "labels": {"shard": str(i % 10), "app": "bench"}},
                "data": {"index": str(i), "payload": "x" * 200},
            }
            async with session.post(base, json=body) as resp:
                assert resp.status == 201
                await resp.read()

        async def get(i: int) -> None:
            async with session.get(f"{base}/cm-{i:05d}") as resp:
                await resp.read()

        async def patch(i: int) -> None:
            headers = {"Content-Type": "application/merge-patch+json"}
            async with session.patch(
                f"{base}/cm-{i:05d}", data=json.dumps({"data": {"patched": "yes"}}), headers=headers
            ) as resp:
                await resp.read()

        async def select(i: int) -> None:
            async with session.get(base, params={"labelSelector": f"app=bench,shard={i % 10}"}) as resp:
                items = (await resp.json())["items"]
                assert len(items) == objects // 10, len(items)

        async def create_cr(i: int) -> None:
            body = {
                "apiVersion": "bench.dev/v1",
                "kind": "Widget",
                "metadata": {"name": f"w-{i:05d}"},
                "spec": {"size": i % 5, "version": "1.2.3"},
            }
            async with session.post(widgets, json=body) as resp:
                await resp.read()

        await timed("create ConfigMap", objects, concurrency, create)
        await timed("get ConfigMap by name", objects, concurrency, get)
        await timed("merge-patch ConfigMap", objects, concurrency, patch)
        await timed("list ConfigMaps with labelSelector", max(objects // 10, 10), concurrency, select)
        async with session.post(f"{url}/apis/apiextensions.k8s.io/v1/customresourcedefinitions", json=CRD) as resp:
            await resp.read()
        await timed("create Widget (schema + CEL)", objects, concurrency, create_cr)

        async with session.get(base, params={"limit": "1"}) as resp:
            recent = int((await resp.json())["metadata"]["resourceVersion"]) - 5
        started = time.perf_counter()
        params = {"watch": "true", "resourceVersion": str(recent), "timeoutSeconds": "1"}
        async with session.get(f"{url}/apis/bench.dev/v1/namespaces/default/widgets", params=params) as resp:
            events = [line for line in (await resp.read()).splitlines() if line]
        print(
            f"{'watch resume from a recent rv':<34} {len(events):>6} events    "
            f"{time.perf_counter() - started:7.2f} s  (incl. the 1 s server timeout)"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objects", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=8)
    args = parser.parse_args()
    with ApiServerThread(request_log_limit=None) as api:
        print(f"RealisticEmulator at {api.url}: {args.objects} objects, concurrency {args.concurrency}")
        started = time.perf_counter()
        asyncio.run(run(api.url, args.objects, args.concurrency))
        print(f"{'total':<34} {'':>6}           {time.perf_counter() - started:7.2f} s")


if __name__ == "__main__":
    main()

"""Serving benchmarks: the gateway against vLLM itself, adapters mixed, a naive baseline, hot-loading.

    .venv/bin/python bench/serve.py                      # the tiny test model (built in seconds)
    .venv/bin/python bench/serve.py --model smollm2      # SmolLM2-135M (`tuneloop models pull smollm2-135m`)
    .venv/bin/python bench/serve.py --only overhead,hot  # some sections
    .venv/bin/python bench/serve.py --only overhead --workers 1,2  # fewer replicas
    .venv/bin/python bench/serve.py --only overhead --engine-cpus 0  # engine threads on core 0 only
    .venv/bin/python bench/serve.py --only overhead --workers 1 --relay  # + an in-process relay
    .venv/bin/python bench/serve.py --only overhead --workers 1 --in-engine  # + the gateway in its engine

One run starts one replica exactly as users run it (`tuneloop serve`, its own vLLM engine, default
settings: capture on at sample rate 1, prompt embeddings on) on free loopback ports under a scratch
TUNELOOP_HOME, publishes 16 random LoRA adapters (plus 6 versions of a `hot` adapter) through the
artifact store and registry, and measures, side by side:

(a) overhead: the same load -- 16 concurrent streams, 64 tokens each (`ignore_eos`), 4 requests per
    stream -- sent straight to the engine's port and through the gateway, for replicas with 1, 2
    and 4 gateway workers (`--workers`), all running at once, in alternating rounds (direct and
    gateway, the replicas in turn) so a change in machine load hits every row, each over keep-alive
    connections. Per worker count: throughput ratio gateway/direct (goal >= 0.9), the latency the
    gateway adds at p50 (goal <= 10 ms) and p99, end to end and to the first token, and the CPU
    seconds the gateway's process group (parent and workers) and the engine used per 1,000 tokens
    (goal for the gateway <= 0.03). With --relay, an experiment: each round also sends the load to
    the engine's port through bench/inprocess_relay.py, a middleware inside the engine's process that
    does the gateway's per-request and per-event rewriting -- what a gateway that is not a second
    process would cost.
(b) adapters: the same load through the gateway for the base model and for 1, 4, 8 and 16 distinct
    adapters mixed round-robin (every adapter loaded before the clock starts; engine LoRA limits
    derived from the registry).
(e) limits: 8 and 16 distinct adapters mixed through three replicas whose engines differ only in
    their LoRA limits: derived from the registry (serve/engine/lora_limits.py), tuneloop's fixed
    defaults before that (4 adapters per batch, rank 16), and vLLM's defaults (1 per batch, rank 16),
    in alternating rounds.
(c) naive: the 8-adapter load of (b) served the way one would without a serving engine: one
    transformers model with the 8 peft adapters loaded, `set_adapter` + `generate` per request.
(d) hot-load: seconds from `Registry.promote` (what `tuneloop adapters promote` does) of a version
    never loaded before to the first token streamed from that version, while a client keeps calling
    the alias (registry poll 0.5 s, then fetch, check and load, then the switch).

A script, not a test: request counts are fixed and small; everything it starts (the gateway and its
engine, each in its own process group) is stopped by process group at the end, and checked gone.
The 1-minute load average is printed beside every number; on a shared machine it says how far to
trust them. Results as JSON with --json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))  # the test builders: tiny model, random LoRA, gateway launcher

from helpers.gateway import Gateway, children, start_gateway  # noqa: E402
from helpers.tiny_model import bench_model_dir, build_random_lora  # noqa: E402
from inprocess_relay import ALIAS, RELAY_HEADER  # noqa: E402
from serve_load import (  # noqa: E402
    PROMPTS,
    Load,
    Server,
    Shape,
    cpu_seconds,
    line,
    merge,
    process_cpu_seconds,
    run_load,
    session,
)

from tuneloop.platform.adapters import import_adapter  # noqa: E402
from tuneloop.platform.apikeys import create_key  # noqa: E402
from tuneloop.platform.artifacts import ArtifactStore  # noqa: E402
from tuneloop.platform.procs import group_members  # noqa: E402
from tuneloop.platform.registry import Registry  # noqa: E402

IN_ENGINE_CPU = "; in engine: vLLM's server process in gateway rounds less direct rounds"
SECTIONS = ("overhead", "adapters", "limits", "naive", "hot")
ADAPTER_COUNTS = (1, 4, 8, 16)
# (e): the engine's LoRA limits; each row is a replica started with these settings.
LIMITS = {
    "derived from the registry": {},
    "tuneloop before (4 per batch, rank 16)": {
        "TUNELOOP_ENGINE_MAX_LORAS": "4",
        "TUNELOOP_ENGINE_LORA_RANK": "16",
    },
    "vLLM defaults (1 per batch, rank 16)": {
        "TUNELOOP_ENGINE_MAX_LORAS": "1",
        "TUNELOOP_ENGINE_LORA_RANK": "16",
    },
}


@dataclass(frozen=True)
class Side:
    """One replica under test: its gateway and its engine (direct), and what CPU they use: `meters`
    maps a name to a reading of CPU seconds (the gateway's and the engine's process groups, and the
    engine's server process alone, where a gateway inside the engine does its work)."""

    label: str
    gateway: Server
    engine: Server
    engine_model: str
    meters: dict[str, Callable[[], float]]
    in_engine: bool = False
    """The gateway works inside vLLM's server process: its cost there is what gateway rounds use
    beyond direct ones (its own process group, the parent, only supervises)."""
    relay: Server | None = None  # the engine's port with X-Relay: 1 (--relay; bench/inprocess_relay.py)


async def overhead(sides: Sequence[Side], base: str, shape: Shape, rounds: int) -> dict[str, Any]:
    """(a): for each replica (1, 2, 4 workers), alternating rounds straight to its engine and
    through its gateway, the replicas in turn, so a change in machine load hits every row.

    CPU seconds of the gateway's process group (the parent and its workers) and the engine's per
    1,000 tokens are recorded too: on a small CPU-only machine the gateway's cost is CPU taken
    from the engine.
    """
    for side in sides:
        await run_load("warm-up", side.engine, [side.engine_model], shape)
        await run_load("warm-up", side.gateway, [base], shape)
    results: dict[str, Any] = {}
    kinds = ("direct", "gateway", "relay")
    loads: dict[str, dict[str, list[Load]]] = {s.label: {k: [] for k in kinds} for s in sides}
    cpu = {s.label: {k: dict.fromkeys(s.meters, 0.0) for k in kinds} for s in sides}
    for r in range(rounds):
        turn = list(sides[r % len(sides) :]) + list(sides[: r % len(sides)])
        for side in turn:
            order = [("direct", side.engine, side.engine_model), ("gateway", side.gateway, base)]
            if side.relay is not None:
                order.append(("relay", side.relay, ALIAS))
            for kind, server, model in order if r % 2 == 0 else order[::-1]:
                before = {name: read() for name, read in side.meters.items()}
                load = await run_load(f"{side.label} {kind} {r + 1}", server, [model], shape)
                for name, read in side.meters.items():
                    cpu[side.label][kind][name] += read() - before[name]
                loads[side.label][kind].append(load)
                print(line(load), flush=True)
    for side in sides:
        direct, through, relayed = (loads[side.label][k] for k in kinds)
        d, g = merge(f"{side.label} direct", direct), merge(f"{side.label} gateway", through)
        per_k = {
            kind: {
                name: used / (sum(x.tokens for x in xs) / 1000)
                for name, used in cpu[side.label][kind].items()
            }
            for kind, xs in (("direct", direct), ("gateway", through))
        }
        gateway_cpu = per_k["gateway"]["gateway"]
        if side.in_engine:
            gateway_cpu += per_k["gateway"]["engine server"] - per_k["direct"]["engine server"]
        row = {
            "direct_tokens_per_s": d.tokens_per_s,
            "gateway_tokens_per_s": g.tokens_per_s,
            "throughput_ratio": g.tokens_per_s / d.tokens_per_s,
            "round_ratios": [b.tokens_per_s / a.tokens_per_s for a, b in zip(direct, through, strict=True)],
            "added_p50_ms": (g.pct(g.latencies, 0.5) - d.pct(d.latencies, 0.5)) * 1e3,
            # Each round against the direct round beside it: the spread says what the merged figure is worth.
            "round_added_p50_ms": [
                (b.pct(b.latencies, 0.5) - a.pct(a.latencies, 0.5)) * 1e3
                for a, b in zip(direct, through, strict=True)
            ],
            "added_p99_ms": (g.pct(g.latencies, 0.99) - d.pct(d.latencies, 0.99)) * 1e3,
            "added_ttft_p50_ms": (g.pct(g.ttfts, 0.5) - d.pct(d.ttfts, 0.5)) * 1e3,
            "gateway_cpu_s_per_1k_tokens": gateway_cpu,
            "cpu_s_per_1k_tokens": per_k,
            "loads": [line(d), line(g)],
        }
        if relayed:
            rel = merge(f"{side.label} relay", relayed)
            row |= {
                "relay_tokens_per_s": rel.tokens_per_s,
                "relay_ratio": rel.tokens_per_s / d.tokens_per_s,
                "relay_round_ratios": [
                    b.tokens_per_s / a.tokens_per_s for a, b in zip(direct, relayed, strict=True)
                ],
                "relay_added_p50_ms": (rel.pct(rel.latencies, 0.5) - d.pct(d.latencies, 0.5)) * 1e3,
                "relay_engine_cpu_s_per_1k_tokens": cpu[side.label]["relay"]["engine"] / (rel.tokens / 1000),
            }
            row["loads"].append(line(rel))
        results[side.label] = row
        print(*row["loads"], sep="\n")
        how = IN_ENGINE_CPU if side.in_engine else ""
        print(
            f"(a) {side.label}: throughput ratio gateway/direct {row['throughput_ratio']:.3f} (goal >= 0.9; "
            f"rounds {', '.join(f'{x:.3f}' for x in row['round_ratios'])}); added latency p50 "
            f"{row['added_p50_ms']:+.1f} ms (goal <= 10; rounds "
            f"{', '.join(f'{x:+.1f}' for x in row['round_added_p50_ms'])}), "
            f"p99 {row['added_p99_ms']:+.1f} ms; added TTFT p50 "
            f"{row['added_ttft_p50_ms']:+.1f} ms; gateway CPU s per 1,000 tokens "
            f"{row['gateway_cpu_s_per_1k_tokens']:.3f} (goal <= 0.03{how}), engine "
            f"{per_k['gateway']['engine']:.3f} (direct rounds: {per_k['direct']['engine']:.3f}), of which "
            f"vLLM's server process {per_k['gateway']['engine server']:.3f} "
            f"(direct rounds: {per_k['direct']['engine server']:.3f})",
            flush=True,
        )
        if relayed:
            print(
                f"(a) {side.label}, in-process relay (experiment): throughput ratio relay/direct "
                f"{row['relay_ratio']:.3f} "
                f"(rounds {', '.join(f'{x:.3f}' for x in row['relay_round_ratios'])}); "
                f"added latency p50 {row['relay_added_p50_ms']:+.1f} ms; engine CPU s per 1,000 tokens "
                f"{row['relay_engine_cpu_s_per_1k_tokens']:.3f}",
                flush=True,
            )
    return results


async def limits(sides: Sequence[Side], names: Sequence[str], shape: Shape, rounds: int) -> dict[str, Any]:
    """(e): 8 and 16 distinct adapters mixed, through replicas whose engines differ only in their
    LoRA limits (LIMITS), in alternating rounds."""
    for side in sides:  # every adapter loaded in every engine before the clock starts
        await run_load("warm-up", side.gateway, list(names), Shape(len(names), 1, 4))
    results: dict[str, Any] = {}
    for count in (8, 16):
        runs: dict[str, list[Load]] = {s.label: [] for s in sides}
        for r in range(rounds):
            for side in sides if r % 2 == 0 else sides[::-1]:
                load = await run_load(
                    f"{count} mixed, {side.label}", side.gateway, list(names[:count]), shape
                )
                runs[side.label].append(load)
                print(line(load), flush=True)
        merged = {label: merge(f"{count} mixed, {label}", xs) for label, xs in runs.items()}
        reference = merged[sides[-1].label].tokens_per_s
        results[f"{count} adapters mixed"] = {
            label: {"tokens_per_s": x.tokens_per_s, "vs_" + sides[-1].label: x.tokens_per_s / reference}
            for label, x in merged.items()
        }
        print(
            f"(e) {count} adapters mixed: "
            + "; ".join(
                f"{label} {x.tokens_per_s:.1f} tok/s ({x.tokens_per_s / reference:.2f}x)"
                for label, x in merged.items()
            )
        )
    return results


async def adapters(
    gateway: Server, base: str, names: Sequence[str], shape: Shape, rounds: int
) -> dict[str, Any]:
    """(b): base only, then 1, 4, 8, 16 distinct adapters mixed round-robin."""
    # Every adapter loaded (and the engine warm) before the clock starts.
    await run_load("warm-up", gateway, [base, *names], Shape(len(names) + 1, 1, 4))
    loads: dict[str, Load] = {}
    for count in (0, *ADAPTER_COUNTS):
        models = [base] if count == 0 else list(names[:count])
        name = "base only" if count == 0 else f"{count} adapter{'s' if count > 1 else ''} mixed"
        runs = [await run_load(name, gateway, models, shape) for _ in range(rounds)]
        loads[name] = merge(name, runs)
        print(line(loads[name]), flush=True)
    base_rate = loads["base only"].tokens_per_s
    result = {
        name: {"tokens_per_s": x.tokens_per_s, "vs_base": x.tokens_per_s / base_rate}
        for name, x in loads.items()
    }
    print("(b) " + "; ".join(f"{name} {v['vs_base']:.2f}x base" for name, v in result.items()))
    return {"rates": result, "loads": [line(x) for x in loads.values()]}


def naive(model_dir: Path, adapter_dirs: Sequence[Path], shape: Shape) -> dict[str, Any]:
    """(c): one peft model with every adapter, `set_adapter` + `generate` per request, in turn."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    model: Any = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    model = PeftModel.from_pretrained(model, str(adapter_dirs[0]), adapter_name="a0")
    for i, folder in enumerate(adapter_dirs[1:], start=1):
        model.load_adapter(str(folder), adapter_name=f"a{i}")
    model.eval()
    requests = shape.concurrency * shape.per_stream
    latencies, tokens = [], 0
    with torch.no_grad():
        for n in range(requests + 2):  # two warm-up requests, not counted
            model.set_adapter(f"a{n % len(adapter_dirs)}")
            ids = tokenizer(PROMPTS[n % len(PROMPTS)], return_tensors="pt")
            started = time.perf_counter()
            out = model.generate(
                **ids,
                max_new_tokens=shape.tokens,
                min_new_tokens=shape.tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
            if n >= 2:
                latencies.append(time.perf_counter() - started)
                tokens += int(out.shape[1] - ids["input_ids"].shape[1])
    load = Load("naive peft generate", sum(latencies), tokens, latencies, [], os.getloadavg()[0])
    print(line(load), flush=True)
    return {
        "tokens_per_s": load.tokens_per_s,
        "requests": requests,
        "threads": torch.get_num_threads(),
        "loads": [line(load)],
    }


async def hot_load(gateway: Server, registry: Registry, refs: Sequence[str]) -> dict[str, Any]:
    """(d): promote a never-loaded version while a client keeps calling the alias; time to its first token."""
    body = {"model": "hot", "prompt": PROMPTS[0], "max_tokens": 2, "stream": True, "ignore_eos": True}

    async def first_token_from(ref: str) -> float:
        """Call the alias until a response from `ref` streams its first token; that moment."""
        while True:
            async with gateway.session.post(f"{gateway.url}/v1/completions", json=body) as response:
                async for event in response.content:
                    if event.startswith(b"data: {") and b'"text":"' in event and b'"text":""' not in event:
                        if response.headers.get("x-tuneloop-version") == ref:
                            return time.perf_counter()
                        break

    await asyncio.to_thread(registry.promote, "hot", refs[0])
    await asyncio.wait_for(first_token_from(refs[0]), 60)
    seconds = []
    for ref in refs[1:]:
        waiting = asyncio.create_task(first_token_from(ref))
        await asyncio.sleep(0.3)  # the client is calling the old version when the promotion lands
        promoted = time.perf_counter()
        await asyncio.to_thread(registry.promote, "hot", ref)
        seconds.append(await asyncio.wait_for(waiting, 60) - promoted)
        print(f"hot-load {ref}: first token {seconds[-1]:.3f} s after the promotion", flush=True)
    result = {"seconds": seconds, "median_s": statistics.median(seconds), "max_s": max(seconds)}
    print(
        f"(d) promotion -> first token of the new version: median {result['median_s']:.3f} s, "
        f"max {result['max_s']:.3f} s over {len(seconds)} promotions"
    )
    return result


def build(model: str, scratch: Path, count: int, hot: int) -> tuple[Path, list[Path], list[Path]]:
    """The model folder, `count` random LoRAs, and `hot` more for the hot-load versions."""
    model_dir = bench_model_dir(model, scratch)
    loras = [build_random_lora(model_dir, scratch / f"lora{i}", rank=8, seed=i + 1) for i in range(count)]
    hots = [build_random_lora(model_dir, scratch / f"hot{i}", rank=8, seed=100 + i) for i in range(hot)]
    return model_dir, loras, hots


async def bench(args: argparse.Namespace, scratch: Path) -> dict[str, Any]:
    sections = set(args.only.split(",")) if args.only else set(SECTIONS)
    shape = Shape(args.concurrency, args.per_stream, args.tokens)
    print(f"building {args.model} and {max(ADAPTER_COUNTS)} LoRA adapters in {scratch}", flush=True)
    model_dir, loras, hots = build(args.model, scratch, max(ADAPTER_COUNTS), args.hot_loads + 1)
    home = scratch / "home"
    home.mkdir()
    registry = Registry(f"sqlite:///{home / 'registry.db'}")
    store = ArtifactStore(str(home / "artifacts"))
    names = []
    for i, folder in enumerate(loras):
        import_adapter(f"a{i}", folder, registry=registry, store=store, max_lora_rank=16)
        names.append(f"a{i}@1")
    refs = [import_adapter("hot", f, registry=registry, store=store, max_lora_rank=16).ref for f in hots]
    key = {"Authorization": f"Bearer {create_key(registry, scopes=[], admin=True).secret}"}
    results: dict[str, Any] = {}
    context = "512" if args.model == "tiny" else "2048"  # the tiny model has 512 positions
    env = {"TUNELOOP_ENGINE_MAX_MODEL_LEN": context, "TUNELOOP_ENGINE_KV_CACHE_BYTES": str(256 * 2**20)}
    if args.engine_cpus:  # vLLM's own variable: the cores its OpenMP threads are bound to
        env["VLLM_CPU_OMP_THREADS_BIND"] = args.engine_cpus
    shared = {
        "TUNELOOP_DB_URL": f"sqlite:///{home / 'registry.db'}",
        "TUNELOOP_ARTIFACTS": str(home / "artifacts"),
    }
    env |= shared
    engine_pids: set[int] = set()
    base = str(model_dir)
    if "overhead" in sections:
        rows = {f"{n} worker{'s' if n > 1 else ''}": env | {"TUNELOOP_WORKERS": str(n)} for n in args.workers}
        if args.in_engine:
            rows["in engine"] = env | {"TUNELOOP_IN_ENGINE": "1"}
        if args.relay:  # the experiment's middleware in every engine of (a): bench/inprocess_relay.py
            relay_env = {
                "TUNELOOP_ENGINE_EXTRA_ARGS": "--middleware inprocess_relay.Relay",
                "PYTHONPATH": str(ROOT / "bench"),
                "RELAY_ENGINE_MODEL": base,
            }
            rows = {label: row | relay_env for label, row in rows.items()}
        async with replicas(model_dir, scratch, rows, key, engine_pids, relay=args.relay) as sides:
            results["overhead"] = await overhead(sides, base, shape, args.rounds)
    if sections & {"adapters", "naive", "limits", "hot"}:
        rows = {label: env | extra for label, extra in LIMITS.items()}
        if "limits" not in sections:
            rows = dict(list(rows.items())[:1])
        async with replicas(model_dir, scratch, rows, key, engine_pids) as sides:
            if "adapters" in sections or "naive" in sections:
                results["adapters"] = await adapters(
                    sides[0].gateway, base, names, shape, args.adapter_rounds
                )
            if "limits" in sections:
                results["limits"] = await limits(sides, names, shape, args.adapter_rounds)
            if "hot" in sections:
                results["hot"] = await hot_load(sides[0].gateway, registry, refs)
    left = [pid for pid in engine_pids if group_members(pid)]
    assert not left, f"engine process groups left: {left}"
    if "naive" in sections:  # with the engine stopped: the naive server gets the whole machine
        results["naive"] = naive(model_dir, loras[:8], shape)
        served = results["adapters"]["rates"]["8 adapters mixed"]["tokens_per_s"]
        plain = results["naive"]["tokens_per_s"]
        results["naive"]["gateway_8_adapters_ratio"] = served / plain
        print(
            f"(c) 8 adapters mixed: gateway {served:.1f} tok/s vs naive per-request peft generate "
            f"{plain:.1f} tok/s: {served / plain:.1f}x"
        )
    return results


@contextlib.asynccontextmanager
async def replicas(
    model_dir: Path,
    scratch: Path,
    rows: dict[str, dict[str, str]],
    key: dict[str, str],
    engine_pids: set[int],
    *,
    relay: bool = False,
) -> AsyncIterator[list[Side]]:
    """One replica per row (label -> settings), each with its own home, sharing registry and store;
    all running together, so rounds can alternate among them. Stopped by process group."""
    with contextlib.ExitStack() as stack:
        async with contextlib.AsyncExitStack() as sessions:
            sides = []
            for label, env in rows.items():
                home = scratch / f"replica{len(list(scratch.glob('replica*')))}"
                home.mkdir()
                running: Gateway = stack.enter_context(start_gateway(str(model_dir), home, extra_env=env))
                (engine_pid,) = running.engine_pids()  # each leads its own process group
                # A gateway inside its engine (--in-engine) shares its port; the engine key goes to vLLM.
                in_engine = env.get("TUNELOOP_IN_ENGINE") == "1"
                engine_url = running.url if in_engine else running.engine_url
                engine_pids.add(engine_pid)
                print(f"{label}: gateway {running.url} (pid {running.process.pid}), engine {engine_url}")
                through = await sessions.enter_async_context(session(key))
                straight = await sessions.enter_async_context(session(running.engine_headers()))
                async with straight.get(f"{engine_url}/v1/models") as response:
                    engine_model = (await response.json())["data"][0]["id"]
                (server_pid,) = children(engine_pid)  # the engine's guard runs vLLM's server
                meters = {
                    "gateway": functools.partial(cpu_seconds, running.process.pid),
                    "engine": functools.partial(cpu_seconds, engine_pid),
                    "engine server": functools.partial(process_cpu_seconds, server_pid),
                }
                relayed = None
                if relay:
                    name, value = (x.decode() for x in RELAY_HEADER)
                    headers = running.engine_headers() | {name: value}
                    relayed = Server(engine_url, await sessions.enter_async_context(session(headers)))
                sides.append(
                    Side(
                        label,
                        Server(running.url, through),
                        Server(engine_url, straight),
                        engine_model,
                        meters,
                        in_engine,
                        relayed,
                    )
                )
            yield sides


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", choices=("tiny", "smollm2"), default="tiny")
    parser.add_argument("--only", help=f"comma-separated sections of {', '.join(SECTIONS)} (default: all)")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--per-stream", type=int, default=4, help="requests each stream sends in turn")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=4, help="(a): rounds per side, alternating")
    parser.add_argument(
        "--workers",
        type=lambda raw: [int(x) for x in raw.split(",")],
        default=[1, 2, 4],
        help="(a): gateway worker counts, one replica each (default: 1,2,4)",
    )
    parser.add_argument("--adapter-rounds", type=int, default=2, help="(b): rounds per configuration")
    parser.add_argument("--hot-loads", type=int, default=5)
    parser.add_argument(
        "--engine-cpus",
        help="bind the engine's threads to these cores (vLLM's VLLM_CPU_OMP_THREADS_BIND, e.g. 0), "
        "leaving the others to the gateway and this client; default: vLLM's own binding",
    )
    parser.add_argument(
        "--in-engine",
        action="store_true",
        help="(a): also a replica with the gateway inside its engine (TUNELOOP_IN_ENGINE=1)",
    )
    parser.add_argument(
        "--relay",
        action="store_true",
        help="(a): also run each load through an in-process relay inside the engine "
        "(bench/inprocess_relay.py), an experiment: what a gateway that is not a second process would cost",
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())} on {os.cpu_count()} CPUs")
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="tuneloop-bench-serve-") as scratch:
        results = asyncio.run(bench(args, Path(scratch)))
    results["args"] = vars(args) | {"json": str(args.json) if args.json else None}
    results["load_average_end"] = os.getloadavg()
    results["seconds"] = time.monotonic() - started
    print(
        f"done in {results['seconds']:.0f} s; load average at end: "
        f"{' '.join(f'{x:.2f}' for x in results['load_average_end'])}"
    )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

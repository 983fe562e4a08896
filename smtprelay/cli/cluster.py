"""`smtprelay cluster status` and `cluster forget`: the nodes sharing this configuration's
Redis store (state.nodes), from their heartbeats."""

from __future__ import annotations

import argparse
import time
from typing import Any

from redis.exceptions import RedisError

from smtprelay.cli.common import EXIT_OK, CommandError, config_from, print_json
from smtprelay.config import Config
from smtprelay.state import nodes
from smtprelay.state.redis import blocking_client, redacted


def register(sub: Any, common: argparse.ArgumentParser,
             listing: argparse.ArgumentParser) -> None:
    group = sub.add_parser("cluster", help="the nodes sharing the Redis store "
                           "(store: {backend: redis})").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    group.add_parser("status", parents=[common, listing],
                     help="every node: alive, draining, connections, queue, rate") \
        .set_defaults(func=cmd_status)
    p = group.add_parser("forget", parents=[common],
                         help="drop a node that is gone for good from the listing")
    p.add_argument("node")
    p.set_defaults(func=cmd_forget)


def _store(config: Config) -> tuple[Any, str]:
    store = config.store
    if store.backend != "redis" or store.url is None:
        raise CommandError("store.backend is sqlite: this relay is one node; set store: "
                           "{backend: redis, url: ...} on every node of a cluster")
    return blocking_client(store.url, store.timeout), store.key_prefix


def cmd_status(args: argparse.Namespace) -> int:
    config = config_from(args)
    client, prefix = _store(config)
    try:
        found = nodes.nodes(client, prefix)
    except RedisError as exc:
        raise CommandError(f"store.url {redacted(config.store.url or '')}: {exc}") from None
    finally:
        client.close()
    if args.json:
        print_json(found)
        return EXIT_OK
    if not found:
        print("no node has written a heartbeat yet")
        return EXIT_OK
    print(f"{'node':<20} {'state':<9} {'pid':>7} {'workers':>7} {'conns':>6} "
          f"{'queued':>7} {'delivering':>10} {'accepted/min':>12} {'last seen':>9}")
    now = time.time()
    for node in found:
        if not node["alive"]:
            print(f"{node['node']:<20} {'gone':<9}")
            continue
        state = "draining" if node.get("draining") else "ready" if node.get("ready") \
            else "starting"
        print(f"{node['node']:<20} {state:<9} {node['pid']:>7} {node['workers']:>7} "
              f"{node['connections']:>6} {node['queue_pending']:>7} "
              f"{node['delivering']:>10} {node['accepted_per_min']:>12} "
              f"{now - node['at']:>8.0f}s")
    return EXIT_OK


def cmd_forget(args: argparse.Namespace) -> int:
    config = config_from(args)
    client, prefix = _store(config)
    try:
        forgotten = nodes.forget(client, prefix, args.node)
    except RedisError as exc:
        raise CommandError(f"store.url {redacted(config.store.url or '')}: {exc}") from None
    finally:
        client.close()
    if not forgotten:
        raise CommandError(f"no node {args.node!r} is listed")
    print(f"forgot node {args.node}")
    return EXIT_OK

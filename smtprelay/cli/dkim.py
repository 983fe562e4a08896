"""`smtprelay dkim keygen`: a DKIM signing key, and the DNS record and configuration
to add for it."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from smtprelay.cli.common import EXIT_OK, CommandError
from smtprelay.config import ENV_CONFIG, load_config


def register(sub: Any, common: argparse.ArgumentParser,
             listing: argparse.ArgumentParser) -> None:
    group = sub.add_parser("dkim", help="DKIM signing keys").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    p = group.add_parser("keygen", parents=[common],
                         help="create a signing key; print the DNS record and config to add")
    p.add_argument("domain", metavar="DOMAIN")
    p.add_argument("--selector", required=True, metavar="S",
                   help="the key's name in DNS: S._domainkey.DOMAIN (e.g. r2026)")
    p.add_argument("--type", choices=("rsa", "ed25519"), default="rsa",
                   help="rsa (2048-bit, every receiver) or ed25519 (sign with both); "
                        "default rsa")
    p.add_argument("--out", metavar="FILE",
                   help="where to write the key (default: data_dir/dkim/DOMAIN.S.pem)")
    p.set_defaults(func=cmd_keygen)


def cmd_keygen(args: argparse.Namespace) -> int:
    from pathlib import Path

    from smtprelay.config import check_domain, check_selector
    from smtprelay.transform import dkim

    try:
        domain = check_domain(args.domain)
        selector = check_selector(args.selector)
    except ValueError as exc:
        raise CommandError(str(exc)) from None
    owner: tuple[int, int] | None = None
    if args.out is not None:
        path = Path(args.out).expanduser().absolute()
    else:
        if args.config is None and not os.environ.get(ENV_CONFIG):
            raise CommandError("pass -c FILE (the key goes to data_dir/dkim/) or --out FILE")
        # The configuration may already name the key about to be created.
        config = load_config(args.config).config
        data_dir = config.server.data_dir
        path = data_dir / "dkim" / f"{domain}.{selector}.pem"
        if os.geteuid() == 0 and data_dir.is_dir() and data_dir.stat().st_uid != 0:
            # Run as root for a daemon running as its own user: the key must be its.
            owner = (data_dir.stat().st_uid, data_dir.stat().st_gid)
        if not path.parent.exists():
            path.parent.mkdir(mode=0o700, parents=True)
            if owner is not None:
                os.chown(path.parent, *owner)
    key = dkim.generate_key(args.type)
    try:
        dkim.write_key(path, key)
    except FileExistsError:
        raise CommandError(f"{path} already exists; not replacing a key (a new selector "
                           "is the way to rotate: keygen with --selector NEW)") from None
    except OSError as exc:
        raise CommandError(f"cannot write {path}: {exc.strerror or exc}") from None
    if owner is not None:
        os.chown(path, *owner)
    kind = f"RSA {dkim.RSA_BITS}-bit, rsa-sha256" if args.type == "rsa" else \
        "Ed25519, ed25519-sha256"
    print(f"Wrote the private key ({kind}) to {path} (mode 0600).")
    print()
    print(f"1. Publish this TXT record in the DNS zone of {domain}:")
    print()
    print(dkim.dns_record(domain, selector, key))
    print()
    print("2. Add the key to the configuration and reload (systemctl reload smtprelay):")
    print()
    print("identities:")
    print(f"  {domain}:")
    print("    dkim:")
    print(f"      - {{selector: {selector}, key_file: {json.dumps(str(path))}}}")
    print()
    print("3. Check what DNS serves, once published (the same text, in pieces):")
    print()
    print(f"dig +short TXT {selector}._domainkey.{domain}")
    return EXIT_OK

"""``tether keys``: node keys and the trust lists.

    tether keys gen --role worker|scheduler|gateway|publisher [--name N | --out PATH] [--force] [--allow]
    tether keys show [--name N | PATH]
    tether keys allow KEY --role ROLE [--kv]      append to the allowlist file (or put into the KV bucket)
    tether keys deny KEY [--kv]
    tether keys list                              the allowlist file's entries
    tether keys fleet [--force]                   the fleet's sealed-box (encryption) public key

Key files live under ``TETHER_HOME/keys/<name>.key`` (mode 0600) with a
``.pub`` beside them; the allowlist file is ``TETHER_HOME/trust/allowlist``
(``TETHER_ALLOWLIST``). Verifiers pick up changes to either source within
``trust_reload_s`` seconds, without a restart.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from tether.identity import ROLES, Identity, decode_public_key, encode_public_key, pub_path
from tether.settings import Settings
from tether.trust import allowlist_line, append_allowlist, kv_key, parse_allowlist


def _key_file(s: Settings, args: argparse.Namespace, default: str) -> Path:
    if getattr(args, "out", None):
        return Path(args.out)
    if getattr(args, "path", None):
        return Path(args.path)
    return s.keys_dir / f"{args.name or default}.key"


def cmd_gen(args: argparse.Namespace, s: Settings) -> int:
    path = _key_file(s, args, args.role)
    ident = Identity.generate(args.role)
    try:
        ident.save(path, force=args.force)
    except FileExistsError as e:
        print(f"error: {e} (use --force)", file=sys.stderr)
        return 1
    print(
        f"{ident.role} key {path} (mode 0600)\npublic key {ident.public_key_b64}\nnode id    {ident.node_id}"
    )
    if args.allow:
        append_allowlist(s.allowlist_path, allowlist_line(ident.public_key, [ident.role], ident.node_id))
        print(f"allowed in {s.allowlist_path}")
    return 0


def cmd_show(args: argparse.Namespace, s: Settings) -> int:
    path = _key_file(s, args, "worker")
    try:
        ident = Identity.load(path)
    except (OSError, ValueError) as e:
        pub = pub_path(path)
        if pub.exists():  # a public key file alone is enough to show
            print(pub.read_text().strip())
            return 0
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(ident.public_key_b64)
    print(f"# {ident.node_id} {ident.role} {path}", file=sys.stderr)
    return 0


async def _kv_put(s: Settings, name: str, note: str) -> None:
    from streams import TRUST_BUCKET, apply, topology
    from tether.connection import connect

    nc = await connect(s.url, name="tether-keys", max_reconnect_attempts=1)
    try:
        js = nc.jetstream()
        await apply(js, topology(s, nc._server_info))
        kv = await js.key_value(TRUST_BUCKET)
        await kv.put(name, note.encode() or b"-")
    finally:
        await nc.close()


def cmd_allow(args: argparse.Namespace, s: Settings) -> int:
    key = decode_public_key(args.key)
    if args.kv:
        asyncio.run(_kv_put(s, kv_key("allow", key, args.role), args.note or ""))
        print(f"allowed as {args.role} in the KV bucket")
    else:
        append_allowlist(s.allowlist_path, allowlist_line(key, [args.role], args.note or ""))
        print(f"allowed as {args.role} in {s.allowlist_path}")
    return 0


def cmd_deny(args: argparse.Namespace, s: Settings) -> int:
    key = decode_public_key(args.key)
    if args.kv:
        asyncio.run(_kv_put(s, kv_key("deny", key), args.note or ""))
        print("denied in the KV bucket")
    else:
        append_allowlist(
            s.allowlist_path, f"deny {args.key.strip()}" + (f"  # {args.note}" if args.note else "") + "\n"
        )
        print(f"denied in {s.allowlist_path}")
    return 0


def cmd_fleet(args: argparse.Namespace, s: Settings) -> int:
    from tether.e2e import FleetBox, fleet_key_path

    path = fleet_key_path(s.keys_dir)
    try:
        box = (
            FleetBox.create(path, force=args.force)
            if args.force or not path.exists()
            else FleetBox.load(path)
        )
    except FileExistsError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    assert box.public_key is not None
    print(encode_public_key(box.public_key))
    print(f"# fleet encryption key {path} (copy it, mode 0600, to every worker)", file=sys.stderr)
    return 0


def cmd_list(args: argparse.Namespace, s: Settings) -> int:
    path = s.allowlist_path
    lists = parse_allowlist(path.read_text(), source=str(path)) if path.exists() else None
    if lists is None:
        print(f"no allowlist at {path}", file=sys.stderr)
        return 1
    for key, roles in sorted(lists.allowed.items()):
        print(allowlist_line(key, roles).strip(), "(denied)" if key in lists.denied else "")
    for key in sorted(lists.denied - set(lists.allowed)):
        print(f"deny {allowlist_line(key).strip()}")
    return 0


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    k = sub.add_parser("keys", help="node keys (Ed25519) and the allowlist / denylist")
    ksub = k.add_subparsers(dest="keys_cmd", required=True, metavar="SUBCOMMAND")
    g = ksub.add_parser("gen", help="write a new keypair (private key mode 0600)")
    g.add_argument("--role", required=True, choices=ROLES, help="what the key signs as")
    g.add_argument("--name", help="file name under TETHER_HOME/keys (default: the role)")
    g.add_argument("--out", help="key file path (overrides --name)")
    g.add_argument("--force", action="store_true", help="replace an existing key file")
    g.add_argument("--allow", action="store_true", help="also add the key to the allowlist file")
    g.set_defaults(keys_fn=cmd_gen)
    sh = ksub.add_parser("show", help="print the public key of a key file")
    sh.add_argument("path", nargs="?", help="key file (default TETHER_HOME/keys/<name>.key)")
    sh.add_argument("--name", help="name under TETHER_HOME/keys (default worker)")
    sh.set_defaults(keys_fn=cmd_show)
    for verb, fn in (("allow", cmd_allow), ("deny", cmd_deny)):
        p = ksub.add_parser(verb, help=f"{verb} a public key (file by default, --kv for the KV bucket)")
        p.add_argument("key", help="public key (urlsafe base64 or hex)")
        if verb == "allow":
            p.add_argument("--role", required=True, choices=ROLES, help="the role the key is trusted for")
        p.add_argument("--kv", action="store_true", help="write to the TETHER_TRUST KV bucket instead")
        p.add_argument("--note", help="a comment kept beside the entry")
        p.set_defaults(keys_fn=fn)
    ksub.add_parser("list", help="the allowlist file's entries").set_defaults(keys_fn=cmd_list)
    f = ksub.add_parser("fleet", help="the fleet's sealed-box key (made if missing); prints its public key")
    f.add_argument("--force", action="store_true", help="replace it (sealed requests in flight fail)")
    f.set_defaults(keys_fn=cmd_fleet)
    k.set_defaults(fn=lambda args: args.keys_fn(args, Settings.from_env()))

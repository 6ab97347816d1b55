"""Development / small-deployment PKI for NATS TLS, made with the ``openssl`` command.

``generate(out, hosts)`` writes, under ``out``:

- ``ca.pem`` / ``ca-key.pem``: a self-signed CA (EC P-256, 10 years)
- ``server.pem`` / ``server-key.pem``: the nats-server certificate for ``hosts``
  (DNS names and IP addresses as subjectAltName), signed by the CA
- ``tls.conf``: the ``tls { ... }`` block that ``infra/nats/prod.conf`` includes

The openssl commands it runs are the documented manual procedure (README,
"Authenticated transport"); private keys are written with mode 0600.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import shutil
import subprocess
from pathlib import Path


def _openssl() -> str:
    found = shutil.which("openssl")
    if not found:
        raise FileNotFoundError("openssl not found on PATH")
    return found


def _run(*args: str, cwd: Path) -> None:
    subprocess.run([_openssl(), *args], cwd=cwd, check=True, capture_output=True)


def _san(hosts: list[str]) -> str:
    entries = []
    for h in hosts:
        try:
            ipaddress.ip_address(h)
            entries.append(f"IP:{h}")
        except ValueError:
            entries.append(f"DNS:{h}")
    return ",".join(entries)


def generate(out: Path, hosts: list[str], *, days: int = 825) -> Path:
    """CA, server certificate and ``tls.conf`` under ``out``; returns ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes")
    _run("req", "-x509", *ec, "-keyout", "ca-key.pem", "-out", "ca.pem", "-days", "3650",
         "-subj", "/CN=Tether NATS CA", cwd=out)  # fmt: skip
    _run("req", *ec, "-keyout", "server-key.pem", "-out", "server.csr", "-subj", f"/CN={hosts[0]}", cwd=out)
    (out / "server.ext").write_text(
        f"subjectAltName={_san(hosts)}\nextendedKeyUsage=serverAuth\nkeyUsage=digitalSignature,keyEncipherment\n"
    )
    _run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca-key.pem", "-CAcreateserial",
         "-out", "server.pem", "-days", str(days), "-extfile", "server.ext", cwd=out)  # fmt: skip
    for name in ("server.csr", "server.ext", "ca.srl"):
        (out / name).unlink(missing_ok=True)
    for key in ("ca-key.pem", "server-key.pem"):
        os.chmod(out / key, 0o600)
    (out / "tls.conf").write_text(
        "# written by `tether certs gen`: TLS is required on every client connection\n"
        "tls {\n"
        f'  cert_file: "{out / "server.pem"}"\n'
        f'  key_file: "{out / "server-key.pem"}"\n'
        f'  ca_file: "{out / "ca.pem"}"\n'
        "  timeout: 2\n"
        "}\n"
    )
    return out


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    c = sub.add_parser("certs", help="TLS certificates and per-role users for infra/nats/prod.conf")
    csub = c.add_subparsers(dest="certs_cmd", required=True, metavar="SUBCOMMAND")
    g = csub.add_parser("gen", help="a CA, a server certificate and tls.conf (openssl)")
    g.add_argument("--out", required=True, help="directory (e.g. infra/nats)")
    g.add_argument(
        "--host", action="append", help="server DNS name or IP (repeat; default localhost, 127.0.0.1)"
    )
    g.set_defaults(
        fn=lambda a: print(f"wrote {generate(Path(a.out), a.host or ['localhost', '127.0.0.1'])}") or 0
    )
    u = csub.add_parser("users", help="auth.conf and credentials.json: one user per role and per worker")
    u.add_argument("--out", required=True, help="directory (e.g. infra/nats)")
    u.add_argument("--worker", action="append", default=[], help="worker id (repeat)")
    u.set_defaults(fn=_users)


def _users(args: argparse.Namespace) -> int:
    from tether.natsauth import NatsUser, write_auth

    users = [NatsUser.new(r) for r in ("admin", "scheduler", "gateway", "publisher", "client")]
    users += [NatsUser.new("worker", w) for w in args.worker]
    path = write_auth(Path(args.out), users)
    print(
        f"wrote {path} and {path.with_name('credentials.json')} (mode 0600): {', '.join(u.name for u in users)}"
    )
    return 0

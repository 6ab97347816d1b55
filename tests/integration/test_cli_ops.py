"""The operator CLI against a running system: status (JSON), infer --stream, jobs replay, keys, bench,
dlq, --help on every command, and exit codes (0 ok, 1 failed, 2 usage)."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import pytest

from tests.proc_helpers import TETHER, run_tether, tether_env
from tether import client
from tether.settings import Settings

COMMANDS = [
    [], ["up"], ["nats"], ["gateway"], ["scheduler"], ["worker"], ["infer"], ["status"], ["jobs"], ["jobs", "list"],
    ["jobs", "show"], ["jobs", "replay"], ["dlq"], ["dlq", "list"], ["apikeys"], ["apikeys", "add"], ["apikeys", "list"],
    ["apikeys", "revoke"], ["keys"], ["keys", "gen"], ["keys", "allow"],
    ["keys", "deny"], ["keys", "show"], ["keys", "list"], ["keys", "fleet"], ["models"], ["models", "publish"],
    ["models", "verify"], ["certs"], ["certs", "gen"], ["certs", "users"], ["bench"], ["dlq", "show"],
    ["dlq", "retry"], ["drain"], ["evict"], ["canary"], ["canary", "start"], ["canary", "set"],
    ["canary", "promote"], ["canary", "abort"], ["canary", "end"], ["canary", "list"],
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "tether")
def test_help_is_complete(command: list[str], tmp_path: Path) -> None:
    r = run_tether(*command, "--help", env=tether_env(tmp_path))
    assert r.returncode == 0, r.stderr
    assert "usage: tether" in r.stdout
    lines = r.stdout.splitlines()
    # every option and subcommand listed carries a help text
    for i, line in enumerate(lines):
        stripped = line.strip()
        if stripped.startswith("-") and "  " not in stripped and i + 1 < len(lines):
            assert lines[i + 1].startswith(" " * 10), f"{stripped!r} has no help in `{' '.join(command)} --help`"


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    env = tether_env(tmp_path)
    assert run_tether("nosuch", env=env).returncode == 2
    assert run_tether("infer", env=env).returncode == 2  # TEXT and --model missing
    assert run_tether("jobs", "replay", "--since", "yesterday", env=env).returncode == 2
    # bad values are named, with no traceback: a port, a number in the environment, a key
    for args, extra, says in (
        (["nats", "--port", "99999"], {}, "not a TCP port"),
        (["status"], {"TETHER_NATS_PORT": "abc"}, "TETHER_NATS_PORT='abc' is not a whole number"),
        (["keys", "allow", "notakey", "--role", "worker"], {}, "not a 32-byte public key"),
        (["keys", "deny", "notakey"], {}, "not a 32-byte public key"),
    ):
        r = run_tether(*args, env={**env, **extra})
        assert r.returncode == 2 and says in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)


def test_jobs_show_of_an_unknown_job_fails_when_results_cannot_be_read(tmp_path: Path) -> None:
    from tether.natsserver import free_port

    env = tether_env(tmp_path, url=f"nats://127.0.0.1:{free_port()}")
    r = run_tether("jobs", "show", "no-such-job", env=env, timeout=60)
    assert r.returncode == 1 and "no job 'no-such-job'" in r.stdout, (r.stdout, r.stderr)


async def _cli(settings: Settings, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = tether_env(tmp_path, url=settings.url, TETHER_STORE=settings.store_url, COLUMNS="200")
    return await asyncio.to_thread(run_tether, *args, env=env)


async def test_ops_commands_against_a_running_system(echo_system, nc, settings: Settings, tmp_path: Path) -> None:
    replies = [await client.infer(nc, model="echo", input=f"r{i}") for i in range(3)]

    r = await _cli(settings, tmp_path, "infer", "streamed words", "--model", "echo", "--stream")
    assert r.returncode == 0 and r.stdout.strip() == "streamed words", r.stderr
    r = await _cli(settings, tmp_path, "infer", "x", "--model", "echo", "--stream", "--json")
    assert json.loads(r.stdout)["result"] == "x"
    r = await _cli(settings, tmp_path, "infer", "x", "--model", "nope")
    assert r.returncode == 1 and "model_unknown" in r.stderr

    r = await _cli(settings, tmp_path, "jobs", "replay", "--since", "10m", "--json")
    assert r.returncode == 0, r.stderr
    replayed = [json.loads(line) for line in r.stdout.splitlines()]
    assert {x["jobId"] for x in replies} <= {x["jobId"] for x in replayed}
    r = await _cli(settings, tmp_path, "jobs", "replay")
    assert r.returncode == 0 and replies[0]["jobId"] in r.stdout
    r = await _cli(settings, tmp_path, "jobs", "replay", "--since", "2099-01-01T00:00:00", "--json")
    assert r.returncode == 0 and r.stdout.strip() == ""

    r = await _cli(settings, tmp_path, "status", "--json")
    snap = json.loads(r.stdout)
    assert snap["workers"][0]["health"] == "HEALTHY" and snap["models"][0]["modelId"] == "echo"
    assert snap["slis"]["requests"] >= 0 and "waiting" in snap["queue"]
    r = await _cli(settings, tmp_path, "status")
    assert r.returncode == 0 and echo_system.workers[0].worker_id in r.stdout and "HEALTHY" in r.stdout

    r = await _cli(settings, tmp_path, "apikeys", "add", "--tenant", "acme", "--name", "ci")
    assert r.returncode == 0 and r.stdout.startswith("tk_")
    digest = r.stdout.split("digest ")[1].split()[0]
    r = await _cli(settings, tmp_path, "apikeys", "list")
    assert digest in r.stdout and "acme" in r.stdout and "tk_" not in r.stdout
    assert (await _cli(settings, tmp_path, "apikeys", "revoke", digest)).returncode == 0
    assert digest not in (await _cli(settings, tmp_path, "apikeys", "list")).stdout
    assert (await _cli(settings, tmp_path, "apikeys", "revoke", digest)).returncode == 1

    r = await _cli(settings, tmp_path, "bench", "-n", "40", "--concurrency", "4")
    assert r.returncode == 0 and "40 ok" in r.stdout, r.stdout + r.stderr

    r = await _cli(settings, tmp_path, "dlq", "list", "--json")
    assert r.returncode == 0 and json.loads(r.stdout) == []


async def test_status_watch_json_prints_only_json_lines(echo_system, settings: Settings, tmp_path: Path) -> None:
    # FORCE_COLOR: rich draws as on a terminal, so a live table would show up in the output
    env = tether_env(tmp_path, url=settings.url, TETHER_STORE=settings.store_url, COLUMNS="200", FORCE_COLOR="1")

    def watch() -> str:
        proc = subprocess.Popen([*TETHER, "status", "--watch", "--json"], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, text=True)
        try:
            out, _ = proc.communicate(timeout=5.0)
        except subprocess.TimeoutExpired:
            proc.terminate()
            out, _ = proc.communicate(timeout=15)
        return out

    lines = [line for line in (await asyncio.to_thread(watch)).splitlines() if line.strip()]
    assert len(lines) >= 2, lines  # one snapshot a second
    assert all(json.loads(line)["workers"][0]["health"] == "HEALTHY" for line in lines), lines

"""Man pages and shell completion: the committed man/ and completions/ equal what the code
renders now (so they cannot drift), each page renders with man(1) without warnings and
covers every command and configuration key, ``make install-data`` puts them where man and
the shells look, and Tab on a JOB argument offers the daemon's job ids and names (bash for
real; zsh and fish through their completion protocol, and for real when installed)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from dataclasses import fields
from pathlib import Path

import pytest
from harness.ferryd import Daemon

from ferry import Client
from ferry.cli.main import cli
from ferry.daemon.config import _DAEMON_KEYS, KEY_DOCS, LIMIT_DOCS, SECTION_DOCS, load_config
from ferry.manpages import COMPLETIONS, PAGES
from ferry.model.job import Limits

ROOT = Path(__file__).parents[2]
BIN = str(Path(sys.executable).parent)


def _man(path: Path) -> subprocess.CompletedProcess[str]:
    if shutil.which("man") is None:
        pytest.skip("man is not installed (.ci/run installs man-db)")
    return subprocess.run(
        ["man", "--warnings", "-l", str(path)],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "MANWIDTH": "120", "LC_ALL": "C.UTF-8", "MANPAGER": "cat"},
    )  # fmt: skip


@pytest.mark.parametrize("rel", sorted(PAGES))
def test_committed_pages_are_what_the_code_renders(rel: str) -> None:
    assert (ROOT / "man" / rel).read_text() == PAGES[rel](), (
        f"man/{rel} is stale: run `make man` and commit the result"
    )


@pytest.mark.parametrize("name", sorted(COMPLETIONS))
def test_committed_completions_are_what_click_renders(name: str) -> None:
    assert (ROOT / "completions" / name).read_text() == COMPLETIONS[name](), (
        f"completions/{name} is stale: run `make man` and commit the result"
    )


def test_pages_render_and_cover_the_code(tmp_path: Path) -> None:
    assert set(KEY_DOCS) == set(_DAEMON_KEYS), "every [daemon] key needs its KEY_DOCS entry"
    assert set(LIMIT_DOCS) == {f.name for f in fields(Limits)}
    rendered = {}
    for rel, render in PAGES.items():
        path = tmp_path / Path(rel).name
        path.write_text(render())
        r = _man(path)
        assert r.returncode == 0 and not r.stderr.strip(), r.stderr
        rendered[rel] = r.stdout
    ferry1 = rendered["man1/ferry.1"]
    for name in cli.list_commands(None):  # type: ignore[arg-type]
        assert f"ferry {name}" in ferry1, name
    assert "--ranges" in ferry1 and "/addfilewithranges" in ferry1
    assert "EXIT STATUS" in ferry1 and "FERRY_SOCKET" in ferry1
    toml5 = rendered["man5/ferryd.toml.5"]
    for key in [*_DAEMON_KEYS, *LIMIT_DOCS]:
        assert key in toml5, key
    for section, (_, keys) in SECTION_DOCS.items():
        assert f"[{section}]" in toml5, section
        for key, *_ in keys:
            assert key in toml5, (section, key)
    ferryd8 = rendered["man8/ferryd.8"]
    for flag in ("--system", "--user", "--socket", "--state-dir", "--config", "--log-level"):
        assert flag in ferryd8


def test_make_install_data(tmp_path: Path) -> None:
    if shutil.which("make") is None or shutil.which("install") is None:
        pytest.skip("make is not installed")
    r = subprocess.run(
        ["make", "-C", str(ROOT), "install-data", f"DESTDIR={tmp_path}", "PREFIX=/usr"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    share = tmp_path / "usr" / "share"
    for rel in (
        "man/man1/ferry.1", "man/man5/ferryd.toml.5", "man/man8/ferryd.8",
        "bash-completion/completions/ferry", "zsh/site-functions/_ferry",
        "fish/vendor_completions.d/ferry.fish",
    ):  # fmt: skip
        assert (share / rel).is_file(), rel
    if shutil.which("man"):
        r = subprocess.run(
            ["man", "-M", str(share / "man"), "5", "ferryd.toml"],
            capture_output=True, text=True, timeout=60,
            env={**os.environ, "MANPAGER": "cat", "MANWIDTH": "100"},
        )  # fmt: skip
        assert r.returncode == 0 and "metrics_listen" in r.stdout, r.stderr


def _protocol(shell: str, words: str, cword: int | str, socket: str) -> str:
    """One completion request as the shell's script makes it (fish passes the word being
    completed itself, the others its index)."""
    env = {
        **os.environ,
        "PATH": f"{BIN}:{os.environ.get('PATH', '')}",
        "_FERRY_COMPLETE": f"{shell}_complete",
        "COMP_WORDS": words,
        "COMP_CWORD": str(cword),
        "FERRY_SOCKET": socket,
    }
    r = subprocess.run(
        [sys.executable, "-m", "ferry.cli.main"], capture_output=True, text=True,
        env=env, timeout=60,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    return r.stdout


def test_job_completion_from_the_daemon(ferryd: Daemon) -> None:
    with Client(ferryd.socket) as c:
        a = c.create_job("alpha-nightly")
        b = c.create_job("beta")
    # bash, for real: the generated script, sourced, answering a Tab after `ferry info `.
    script = (ROOT / "completions" / "ferry").read_text()
    bash = (
        f"{script}\n"
        "COMP_WORDS=(ferry info al); COMP_CWORD=2; _ferry_completion ferry; "
        'printf "%s\\n" "${COMPREPLY[@]}"; '
        'COMP_WORDS=(ferry info ""); COMP_CWORD=2; _ferry_completion ferry; '
        'printf "%s\\n" "${COMPREPLY[@]}"'
    )
    r = subprocess.run(
        ["bash", "-c", bash], capture_output=True, text=True, timeout=60,
        env={**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "FERRY_SOCKET": ferryd.socket},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    lines = r.stdout.split()
    assert lines[0] == "alpha-nightly"
    assert {a.id, b.id, "beta"} <= set(lines[1:])
    # zsh and fish through click's protocol: the candidate with its description.
    zsh = _protocol("zsh", "ferry resume b", 2, ferryd.socket)
    assert f"plain\nbeta\nSUSPENDED {b.id[:8]}" in zsh
    fish = _protocol("fish", "ferry cancel " + a.id[:4], a.id[:4], ferryd.socket)
    assert f"plain,{a.id}\talpha-nightly" in fish
    # Subcommands of groups too: `ferry helper-token show JOB`.
    assert "beta" in _protocol("bash", "ferry helper-token show be", 3, ferryd.socket)
    for shell, prog in (("zsh", "zsh"), ("fish", "fish")):
        if shutil.which(prog) is None:
            continue  # the protocol above is what the shell's script calls
        src = ROOT / "completions" / ("_ferry" if shell == "zsh" else "ferry.fish")
        check = subprocess.run([prog, "-n", str(src)], capture_output=True, text=True, timeout=60)
        assert check.returncode == 0, check.stderr


def test_no_daemon_no_candidates_at_once(tmp_path: Path) -> None:
    t0 = time.monotonic()
    out = _protocol("bash", "ferry info ", 2, str(tmp_path / "nothing.sock"))
    assert out.strip() == ""
    assert time.monotonic() - t0 < 30  # generous: never a hang


def test_completion_command_prints_each_script() -> None:
    for shell in ("bash", "zsh", "fish"):
        r = subprocess.run(
            [sys.executable, "-m", "ferry.cli.main", "completion", shell],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert r.returncode == 0 and "_FERRY_COMPLETE" in r.stdout, r.stderr


def test_section_docs_name_the_keys_ferryd_reads(tmp_path: Path) -> None:
    """Every key SECTION_DOCS documents is one the parser knows, and every section of
    ferryd.toml besides [daemon] and [limits] is documented."""
    assert set(SECTION_DOCS) == {"kerberos", "proxy", "store", "bandwidth", "network"}
    known = {
        "kerberos": {"keytabs": {}},
        "proxy": {"http": "http://p:3128", "https": "http://p:3128", "no_proxy": "a",
                  "pac_url": "file:///x.pac", "wpad": False},
        "store": {"url": "postgresql://u@h/db", "lease_seconds": 5, "worker_id": "w",
                  "credentials_key": "/etc/ferry/credentials.key"},
        "bandwidth": {"background_limit": "2M", "yield_to_others": True,
                      "work_schedule": {"days": ["mon-fri"], "start": "08:00", "end": "17:00"},
                      "maintenance_schedule": {"days": ["sat"], "start": "01:00",
                                               "end": "05:00"}},
        "network": {"cost": "metered", "dbus_address": "unix:path=/x", "netlink": False},
    }  # fmt: skip
    for section, (_, keys) in SECTION_DOCS.items():
        assert {k for k, *_ in keys} == set(known[section]), section
    path = tmp_path / "ferryd.toml"
    path.write_text(
        "[kerberos]\nkeytabs = {}\n"
        '[proxy]\nhttp = "http://p:3128"\nhttps = "http://p:3128"\nno_proxy = "a"\n'
        'pac_url = "file:///x.pac"\nwpad = false\n'
        '[store]\nurl = "postgresql://u@h/db"\nlease_seconds = 5\nworker_id = "w"\n'
        'credentials_key = "/etc/ferry/credentials.key"\n'
        '[bandwidth]\nbackground_limit = "2M"\nyield_to_others = true\n'
        '[bandwidth.work_schedule]\ndays = ["mon-fri"]\nstart = "08:00"\nend = "17:00"\n'
        '[bandwidth.maintenance_schedule]\ndays = ["sat"]\nstart = "01:00"\nend = "05:00"\n'
        '[network]\ncost = "metered"\ndbus_address = "unix:path=/x"\nnetlink = false\n'
    )
    cfg = load_config(system=False, config_file=path)  # every documented key parses
    assert cfg.proxy_wpad is False and cfg.lease_seconds == 5 and cfg.netlink is False

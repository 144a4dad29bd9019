"""Negotiate's cost (SPEC §8.2, issue 11): 1,000 files of 64 KiB from Apache behind Negotiate
(mod_auth_gssapi, a throwaway KDC from k5test), answered with implicit credentials, against
the same files from an open location of the same server. The ratio is the figure: Negotiate
adds one extra round trip per origin and job (later requests carry a fresh token up front),
so it should stay near 1 (target <= 1.2).

    python benchmarks/negotiate_bench.py   (root or not; QUICK=1 for 200 files)
"""

from __future__ import annotations

import os
import random
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.apache import Apache, missing  # noqa: E402
from harness.env import short_tmpdir  # noqa: E402
from harness.ferryd import Daemon  # noqa: E402

import ferry  # noqa: E402
from benchmarks.common import machine_description, median, quick  # noqa: E402

FILES = 200 if quick() else 1000
SIZE = 64 << 10
ROUNDS = 1 if quick() else 3


def _run(d: Daemon, url_base: str, dest: Path, name: str, negotiate: bool) -> float:
    with ferry.Client(d.socket) as c:
        job = c.create_job(name)
        job.add_files(
            [(f"{url_base}/f{i}.bin", str(dest / f"{name}-{i}.bin")) for i in range(FILES)]
        )
        if negotiate:
            job.set_credentials("SERVER", "NEGOTIATE")
        t0 = time.perf_counter()
        job.resume()
        state = job.wait(timeout=600)
        took = time.perf_counter() - t0
        assert state is ferry.JobState.TRANSFERRED, job.data
        job.complete()
    return took


def main() -> None:
    why = missing()
    if why:
        print(f"skipped: {why}")
        return
    import k5test

    realm = k5test.K5Realm(
        portbase=random.randrange(20000, 59000, 10),
        krb5_conf={"libdefaults": {"rdns": "false", "dns_canonicalize_hostname": "false"}},
    )
    base = short_tmpdir("fy-nb-")
    try:
        realm.addprinc(f"HTTP/localhost@{realm.realm}")
        keytab = os.path.join(realm.tmpdir, "http.keytab")
        realm.extract_keytab(f"HTTP/localhost@{realm.realm}", keytab)
        os.chmod(realm.tmpdir, 0o755)
        for n in os.listdir(realm.tmpdir):
            p = os.path.join(realm.tmpdir, n)
            if os.path.isfile(p):
                os.chmod(p, 0o644)
        ccache = str(base / "krb5cc")
        realm.kinit(realm.user_princ, realm.password("user"), flags=["-c", ccache])
        os.environ["KRB5CCNAME"] = f"FILE:{ccache}"  # the library names it at create_job
        server = Apache(
            base / "apache", keytab=keytab, env={"KRB5_CONFIG": realm.env["KRB5_CONFIG"]}
        )
        data = os.urandom(SIZE)
        for i in range(FILES):
            server.put(f"neg/f{i}.bin", data)
            server.put(f"open/f{i}.bin", data)
            server.put(f"negb/f{i}.bin", data)
        server.start()
        d = Daemon(base / "d", env={"KRB5_CONFIG": realm.env["KRB5_CONFIG"]})
        d.start()
        dest = base / "dest"
        dest.mkdir()
        plain: list[float] = []
        neg: list[float] = []
        bound: list[float] = []
        try:
            for r in range(ROUNDS):
                plain.append(_run(d, server.url("open"), dest, f"open{r}", False))
                neg.append(_run(d, server.url("neg"), dest, f"neg{r}", True))
                bound.append(_run(d, server.url("negb"), dest, f"negb{r}", True))
                for f in dest.iterdir():
                    f.unlink()
        finally:
            d.stop()
            server.stop()
        lines = server.log_lines()
        authed = sum(1 for line in lines if line.startswith(realm.user_princ) and "/neg/" in line)
        challenged = sum(1 for line in lines if line.startswith("- 401") and "/neg/" in line)
        challenged_b = sum(1 for line in lines if line.startswith("- 401") and "/negb/" in line)
        p, n, b = median(plain), median(neg), median(bound)
        print(machine_description())
        print(f"{FILES} x 64 KiB, median of {ROUNDS}:")
        print(f"  no auth                    {p:7.3f} s")
        print(f"  negotiate, per request     {n:7.3f} s   ratio {n / p:.2f}")
        print(f"  negotiate, per connection  {b:7.3f} s   ratio {b / p:.2f} (target <= 1.2)")
        print(f"  per request: authenticated {authed}, 401 challenges {challenged}")
        print(f"  per connection: 401 challenges {challenged_b} (one per new connection)")
    finally:
        realm.stop()
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()

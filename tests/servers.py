"""Real servers for the tests, on 127.0.0.1 only: a throwaway PostgreSQL cluster (initdb in a temporary folder,
its own port and socket folder, removed afterwards). `.ci/run` installs the server binaries (`make postgres`)."""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

# What the worker processes log in with; the tests check that it never appears in any output or file.
USER, PASSWORD = "sweeper", "Pg-s3cret-4-tests"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def pg_bin(name: str) -> str:
    """A PostgreSQL server program (Debian keeps them in /usr/lib/postgresql/<major>/bin, off the PATH)."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=lambda p: int(Path(p).parts[-3]))
    found = found or [p for p in [shutil.which(name)] if p]
    assert found, f"PostgreSQL's {name} not found: install the server (`make postgres`, or apt-get install postgresql)"
    return found[-1]


class PostgreSQL:
    """A cluster of our own: trusted over its Unix socket (for set-up), password (scram) over TCP 127.0.0.1."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="lit_softmax-pg-"))
        self.port = free_port()
        self._as = []
        if os.geteuid() == 0:  # the server refuses to run as root: initdb and postgres run as `postgres`
            shutil.chown(self.root, "postgres", "postgres")
            self._as = ["runuser", "-u", "postgres", "--"]
        data = str(self.root / "data")
        self._run(pg_bin("initdb"), "-D", data, "-U", "postgres", "--auth-local=trust", "--auth-host=scram-sha-256")
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c max_connections=200 -c fsync=off"
        self._run(pg_bin("pg_ctl"), "-D", data, "-l", str(self.root / "server.log"), "-o", options, "-w", "start")
        self.sql(f"CREATE ROLE {USER} LOGIN PASSWORD '{PASSWORD}'")

    def _run(self, *command: str) -> str:
        done = subprocess.run([*self._as, *command], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, f"{command[0]} failed:\n{done.stdout}\n{done.stderr}"
        return done.stdout

    def sql(self, statement: str, database: str = "postgres") -> str:
        psql = [pg_bin("psql"), "-h", str(self.root), "-p", str(self.port), "-U", "postgres", "-d", database]
        return self._run(*psql, "-v", "ON_ERROR_STOP=1", "-At", "-c", statement)

    def database(self, name: str) -> str:
        """A new, empty database owned by the test user; returns its SQLAlchemy URL (with the password)."""
        self.sql(f"CREATE DATABASE {name} OWNER {USER}")
        return f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        with_deadline = time.monotonic() + 30
        self._run(pg_bin("pg_ctl"), "-D", str(self.root / "data"), "-m", "immediate", "-w", "stop")
        while time.monotonic() < with_deadline and (self.root / "data" / "postmaster.pid").exists():
            time.sleep(0.1)
        shutil.rmtree(self.root, ignore_errors=True)

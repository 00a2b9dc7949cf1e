"""Training as a launched job: a round's datasets and spec in a job directory, trained by a separate process.

The trainer service does not train inside its Kafka poll loop. For each round it writes a job directory
`<trainer.output_dir>/<target>/jobs/it<N>-<stage>/`:

- `round.json`: the spec (target, iteration, stage, parent checkpoint, model path, provenance, the `[trainer]`
  section), `data/`: the round's batches as Hugging Face datasets (and Parquet; `batches.write_dataset`),
- `state.json`: {state: running|done|failed, pid, attempt, started, ended, returncode}, written by the service,
- `job.log`: the job's output (every attempt, with the TRL progress lines: step, loss, ETA),
- `result.json`: what the job made (the Checkpoint event, its metrics), written by the job when it succeeds.

`JobRunner.run` launches `accelerate launch [--config_file trainer.accelerate_config | --cpu] -m trainer.job
DIR` (or `python -m trainer.job DIR`, `trainer.launcher`) in its own session, so it outlives a killed service,
and waits for it while calling `keepalive()` (the service polls its paused partitions, so it keeps its group
membership however long the round takes). A job that fails is started again `trainer.job_retries` times, then
`JobFailed` carries its output tail. A restarted service finds the round's directory: a finished job's
result is used as it is, a running one is waited for; neither trains the round again.
"""
from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

from arena_flywheel.config import Config, TrainerConfig
from arena_flywheel.errors import ArenaError
from arena_flywheel.events import Checkpoint

from .batches import read_dataset, write_dataset
from .train import StageResult, train_stage

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent  # the project, for the job's import path
TAIL_CHARS = 4000  # of the job's log, in the failure report


class JobFailed(ArenaError):
    """A round's training job failed on every attempt; `tail` is the end of its output."""

    def __init__(self, message: str, job: Path, tail: str):
        super().__init__(message)
        self.job, self.tail = job, tail


def job_dir(cfg: Config, target: str, iteration: int, stage: str) -> Path:
    return Path(cfg.trainer.output_dir).resolve() / target / "jobs" / f"it{iteration}-{stage}"


def _write_json(path: Path, data: dict[str, Any]) -> None:
    """Atomically: a reader (a restarted service) never sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, ensure_ascii=False, indent=1))
    os.replace(tmp, path)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def prepare(cfg: Config, *, stage: str, target: str, iteration: int, parent: str, model_path: str,
            rows: list[dict[str, Any]], reward_rows: list[dict[str, Any]] | None = None,
            provenance: dict[str, Any] | None = None) -> Path:
    """Write the round's job directory: its datasets under data/ and round.json. Returns the directory."""
    d = job_dir(cfg, target, iteration, stage)
    d.mkdir(parents=True, exist_ok=True)
    for name in ("state.json", "result.json"):  # a new round here (an earlier attempt's failure): start clean
        (d / name).unlink(missing_ok=True)
    meta = {"target": target, "iteration": iteration, "stage": stage, "parent": parent, **(provenance or {})}
    write_dataset(rows, d / "data", stage, meta)
    if stage == "rl":
        write_dataset(reward_rows or [], d / "data", "reward", meta)
    trainer = cfg.trainer.model_dump(mode="json")
    trainer["output_dir"] = str(Path(cfg.trainer.output_dir).resolve())  # the job may start elsewhere
    _write_json(d / "round.json", {"target": target, "iteration": iteration, "stage": stage, "parent": parent,
                                   "model_path": model_path, "provenance": provenance or {}, "trainer": trainer})
    return d


def command(cfg: Config, d: Path) -> list[str]:
    """The job's command line: accelerate launch (the user's config file, or one process, --cpu without CUDA)."""
    job = ["-m", "trainer.job", str(d)]
    t = cfg.trainer
    if t.launcher == "python":
        return [sys.executable, *job]
    launch = [sys.executable, "-m", "accelerate.commands.launch"]
    if t.accelerate_config:
        return [*launch, "--config_file", t.accelerate_config, *job]
    import torch

    return [*launch, "--num_processes", "1", "--num_machines", "1", "--dynamo_backend", "no",
            *([] if torch.cuda.is_available() else ["--cpu"]), *job]


def spec_of(d: Path) -> dict[str, Any] | None:
    """The round.json of a job directory (None: no job there)."""
    return _read_json(d / "round.json")


def result_of(d: Path) -> StageResult | None:
    """The finished job's result (None: it has not finished, or failed)."""
    res = _read_json(d / "result.json")
    if res is None:
        return None
    ck = res.get("checkpoint")
    return StageResult(Checkpoint.model_validate({k: v for k, v in ck.items() if k != "schema"}) if ck else None,
                       res.get("metrics") or {}, res.get("skipped"))


def _alive(pid: int, d: Path) -> bool:
    """Is `pid` still this job's process (not a recycled pid)?"""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True  # no /proc (not Linux): trust the pid
    return str(d) in cmdline and ") Z" not in stat  # a zombie has finished


def running(d: Path) -> bool:
    """Does the job directory have a job running now?"""
    state = _read_json(d / "state.json") or {}
    return state.get("state") == "running" and bool(state.get("pid")) and _alive(state["pid"], d)


def tail(d: Path, chars: int = TAIL_CHARS) -> str:
    try:
        with open(d / "job.log", "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - chars))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


class JobRunner:
    """Runs a prepared job directory to its end; `keepalive()` is called about every `every_s` while it runs."""

    def __init__(self, cfg: Config, keepalive: Callable[[], Any] | None = None, every_s: float = 0.2):
        self.cfg, self.keepalive, self.every_s = cfg, keepalive or (lambda: None), every_s

    def _wait(self, until_done: Callable[[], bool]) -> None:
        while not until_done():
            self.keepalive()
            time.sleep(self.every_s)

    def existing(self, d: Path) -> StageResult | None:
        """A finished job's result, or (a running job left by a stopped service) its result once it ends;
        None when there is no job to take over (none, failed, or died without a result)."""
        done = result_of(d)
        if done is not None:
            log.info("%s: the job has finished already; using its result", d.name)
            return done
        if not running(d):
            return None
        state = _read_json(d / "state.json") or {}
        pid = state["pid"]
        log.info("%s: a job is running (pid %d, attempt %d); waiting for it instead of starting another",
                 d.name, pid, state.get("attempt", 1))
        self._wait(lambda: not _alive(pid, d))
        done = result_of(d)
        _write_json(d / "state.json", {**state, "state": "done" if done else "failed", "ended": time.time()})
        return done

    def run(self, d: Path) -> StageResult:
        """Launch the job (retrying `trainer.job_retries` times) and return its result; JobFailed at the end."""
        attempts = self.cfg.trainer.job_retries + 1
        cmd = command(self.cfg, d)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])]),
               "TOKENIZERS_PARALLELISM": "false"}
        rc = None
        for attempt in range(1, attempts + 1):
            with open(d / "job.log", "ab") as out:
                out.write(f"=== attempt {attempt}/{attempts}: {' '.join(cmd)}\n".encode())
                out.flush()
                # its own session: Ctrl-C or a kill of the service leaves the job to finish (a restart takes it over)
                proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                                        start_new_session=True)
            state = {"state": "running", "pid": proc.pid, "attempt": attempt, "started": time.time()}
            _write_json(d / "state.json", state)
            log.info("%s: training job started (pid %d, attempt %d/%d), log %s", d.name, proc.pid, attempt,
                     attempts, d / "job.log")
            self._wait(lambda: proc.poll() is not None)
            rc = proc.returncode
            done = result_of(d) if rc == 0 else None
            _write_json(d / "state.json", {**state, "state": "done" if done else "failed", "returncode": rc,
                                           "ended": time.time()})
            if done is not None:
                return done
            log.warning("%s: training job attempt %d/%d failed (exit %s); its output ends:\n%s", d.name, attempt,
                        attempts, rc, tail(d, 1500))
        out_tail = tail(d)
        last = next((ln for ln in reversed(out_tail.splitlines()) if ln.strip()), "no output")
        raise JobFailed(f"training job {d} failed {attempts} time(s) (last exit {rc}): {last.strip()[:300]}; "
                        f"its log: {d / 'job.log'}", d, out_tail)


# ---------------------------------------------------------------------- the job process
def main(argv: list[str] | None = None) -> int:
    """`python -m trainer.job DIR` (what `accelerate launch` runs): train the round of DIR, write result.json."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m trainer.job JOB_DIR", file=sys.stderr)
        return 2
    d = Path(argv[0])
    logging.basicConfig(level=logging.INFO, stream=sys.stdout, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    spec = json.loads((d / "round.json").read_text())
    cfg = Config(trainer=TrainerConfig.model_validate(spec["trainer"]))
    stage = spec["stage"]
    rows = read_dataset(d / "data", stage)
    reward = read_dataset(d / "data", "reward") if stage == "rl" else None
    log.info("job %s: %s iteration %d, %d rows, from %s", d, stage, spec["iteration"], len(rows), spec["model_path"])
    res = train_stage(cfg, stage=stage, model_path=spec["model_path"], iteration=spec["iteration"],
                      target=spec["target"], parent=spec["parent"], rows=rows, reward_rows=reward,
                      provenance=spec["provenance"])
    from accelerate import PartialState

    if PartialState().is_main_process:  # one result, however many processes trained
        _write_json(d / "result.json", {"checkpoint": res.checkpoint.to_wire() if res.checkpoint else None,
                                        "metrics": res.metrics, "skipped": res.skipped})
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""`arena feed`: instructions from files or stdin onto instructions.train / instructions.eval.

Formats: JSONL, JSON (a list or {"data": [...]}), CSV, Parquet (pyarrow), local HF `datasets`
directories (load_from_disk), stdin (JSONL), and `--follow` (tail a growing JSONL file).
Shapes: ShareGPT `conversations`, OpenAI `messages`, MT-bench `turns` (+question_id, category, reference),
arena-hard `prompt`/`uid` (also `turns` of {"content": ...}), Alpaca `instruction`/`input`/`output`,
FastChat vicuna-eval `question_id`/`text`, plain `prompt` / `question` / `instruction` (docs/feed.md).

Instruction ids are content hashes, so a prompt seen twice in one feed is sent once (and downstream
consumers dedupe across feeds by id). A record that cannot become an Instruction (including a hostile one:
over the [limits] on size, nesting or integer digits, invalid UTF-8; arena_flywheel.records) is sent to the
dead-letter topic with its reason and raw bytes; the feed goes on and counts it.

With the embedded broker (no KAFKA_BOOTSTRAP_SERVERS) topics die with this process, so the feed also
runs the SQL ledger in-process and drains it before exiting; with an external broker it only produces.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator

from arena_flywheel.config import Config, LimitsConfig
from arena_flywheel.errors import InputError
from arena_flywheel.events import BadEvent, Instruction, validate
from arena_flywheel.records import Record, item_record, json_record, limits_of, read_records

log = logging.getLogger(__name__)

USER_ROLES = {"human": "user", "user": "user", "prompter": "user"}
ASSISTANT_ROLES = {"gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant", "bard": "assistant",
                   "bing": "assistant", "model": "assistant"}
SYSTEM_ROLES = {"system": "system"}
ROLE_MAP = USER_ROLES | ASSISTANT_ROLES | SYSTEM_ROLES


# A CSV must name at least one of these columns (else it is one InputError, not a dead letter per row).
PROMPT_COLUMNS = ("conversations", "messages", "turns", "instruction", "prompt", "question", "text")
__all__ = ["Record", "FeedStats", "PROMPT_COLUMNS", "instruction_fields", "to_instruction", "iter_records",
           "follow_jsonl", "feed_records"]


@dataclass
class FeedStats:
    sent: int = 0
    duplicates: int = 0
    rejected: int = 0
    by_split: dict[str, int] = field(default_factory=dict)

    def line(self) -> str:
        return f"sent {self.sent}, duplicates {self.duplicates}, rejected {self.rejected}"


# ------------------------------------------------------------------------- shapes -> Instruction
def _text(value: Any, name: str) -> str:
    if isinstance(value, dict) and isinstance(value.get("content"), str):
        value = value["content"]  # arena-hard v2 style {"content": ...}
    if not isinstance(value, str):
        raise BadEvent(f"field {name}: expected a string, got {type(value).__name__}")
    return value


def _list(value: Any, name: str) -> list:
    if not isinstance(value, list) or not value:
        raise BadEvent(f"field {name}: expected a non-empty list, got {type(value).__name__}")
    return value


def _chat(items: list, name: str, role_key: str, text_key: str) -> list[dict[str, str]]:
    msgs = []
    for i, m in enumerate(items):
        if not isinstance(m, dict):
            raise BadEvent(f"field {name}[{i}]: expected an object, got {type(m).__name__}")
        role = ROLE_MAP.get(str(m.get(role_key, m.get("role", ""))).lower())
        if role is None:
            raise BadEvent(f"field {name}[{i}].{role_key}: unknown role {m.get(role_key)!r}")
        msgs.append({"role": role, "content": _text(m.get(text_key, m.get("content")), f"{name}[{i}].{text_key}")})
    return msgs


def instruction_fields(d: Any) -> dict[str, Any]:
    """Map one record of any supported shape to Instruction fields (BadEvent with a reason if not)."""
    if not isinstance(d, dict):
        raise BadEvent(f"expected a JSON object, got {type(d).__name__}")
    out: dict[str, Any] = {}
    reference = None
    if "conversations" in d:  # ShareGPT
        msgs = _chat(_list(d["conversations"], "conversations"), "conversations", "from", "value")
    elif "messages" in d:  # OpenAI chat
        msgs = _chat(_list(d["messages"], "messages"), "messages", "role", "content")
    elif "turns" in d:  # MT-bench, arena-hard v2
        msgs = [{"role": "user", "content": _text(t, f"turns[{i}]")} for i, t in enumerate(_list(d["turns"], "turns"))]
        ref = d.get("reference")
        if isinstance(ref, list) and ref:
            out["references"] = [_text(r, "reference") for r in ref]
            reference = out["references"][-1]
        elif ref is not None:
            reference = _text(ref, "reference")
    elif "instruction" in d and ("input" in d or "output" in d):  # Alpaca
        prompt = _text(d["instruction"], "instruction")
        extra = d.get("input") or ""
        prompt = f"{prompt}\n\n{_text(extra, 'input')}" if extra else prompt
        msgs = [{"role": "user", "content": prompt}]
        if d.get("output"):
            reference = _text(d["output"], "output")
    elif "text" in d and "question_id" in d:  # FastChat vicuna-eval questions (a bare "text" is not a prompt)
        msgs = [{"role": "user", "content": _text(d["text"], "text")}]
    else:
        for key in ("prompt", "question", "instruction"):
            if key in d:
                msgs = [{"role": "user", "content": _text(d[key], key)}]
                break
        else:
            raise BadEvent("no prompt found: expected one of conversations, messages, turns, "
                           "instruction, prompt, question (or question_id with text)")
    # A trailing assistant message is the recorded answer, not part of the prompt: keep it as reference.
    while msgs and msgs[-1]["role"] == "assistant":
        last = msgs.pop()
        reference = reference or last["content"]
    out["messages"] = msgs
    if reference is None and isinstance(d.get("reference"), str):
        reference = d["reference"]
    if reference is not None:
        out["reference"] = reference
    sid = next((d[k] for k in ("question_id", "uid", "id", "source_id") if d.get(k) not in (None, "")), None)
    if sid is not None:
        out["source_id"] = str(sid)
    if isinstance(d.get("category"), str):
        out["category"] = d["category"]
    if isinstance(d.get("tags"), list):
        out["tags"] = [str(t) for t in d["tags"]]
    if d.get("split") in ("train", "eval"):
        out["split"] = d["split"]
    return out


def to_instruction(d: Any, *, split: str, source: str, max_chars: int) -> Instruction:
    fields = instruction_fields(d)
    fields.setdefault("split", split)
    fields["source"] = source
    size = sum(len(m["content"]) for m in fields["messages"])
    if size > max_chars:
        raise BadEvent(f"prompt too long: {size} characters > feed.max_prompt_chars {max_chars}")
    return validate(Instruction, fields)


# ------------------------------------------------------------------------- readers
def _rows(name: str, rows: Iterable[dict], lim: LimitsConfig) -> Iterator[Record]:
    """Rows of Parquet and datasets directories, within the same record limits as the files."""
    for n, row in enumerate(rows, 1):
        yield item_record(f"{name}:{n}", row, lim, default=str, file=name, line=n)


def _plain(v: Any) -> Any:
    """numpy arrays / pyarrow values from Parquet and datasets -> plain lists and dicts."""
    if hasattr(v, "tolist"):
        v = v.tolist()
    if isinstance(v, list):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


def iter_records(path: str, limits: LimitsConfig | Config | None = None) -> Iterator[Record]:
    """Records of a file, directory or '-' (stdin, JSONL). JSONL, JSON and CSV go through the core reader
    (arena_flywheel.records): a bad record is a Record with an error (dead-lettered by feed_records), a
    problem of the whole file an InputError. Parquet and HF datasets directories use their libraries."""
    lim = limits_of(limits)
    p = Path(path)
    if path != "-" and p.is_dir():
        if not (p / "dataset_info.json").exists() and not (p / "dataset_dict.json").exists():
            raise InputError(f"{path}: a directory must be a HF datasets save_to_disk directory")
        import datasets

        ds = datasets.load_from_disk(str(p))
        if isinstance(ds, datasets.DatasetDict):
            for split_name, part in ds.items():
                yield from _rows(f"{p.name}/{split_name}", ({k: _plain(v) for k, v in r.items()} for r in part), lim)
        else:
            yield from _rows(p.name, ({k: _plain(v) for k, v in r.items()} for r in ds), lim)
        return
    suffix = p.suffix.lower()
    if path != "-" and p.exists() and suffix in (".parquet", ".pq"):
        import pyarrow.parquet as pq

        yield from _rows(p.name, (_plain(r) for r in pq.read_table(p).to_pylist()), lim)
        return
    if path != "-" and p.exists() and suffix not in (".jsonl", ".ndjson", ".json", ".csv", ".tsv"):
        raise InputError(f"{path}: unknown format {suffix or '(no suffix)'}; use .jsonl, .json, .csv, .parquet, "
                         "a datasets directory, or - for stdin")
    yield from read_records(path, lim, json_cells=True, need_columns=PROMPT_COLUMNS,
                            columns_what="a prompt column (prompt, question, instruction, turns, messages or "
                                         "conversations)")


def follow_jsonl(path: str, stop, poll_s: float = 0.2, limits: LimitsConfig | Config | None = None) -> Iterator[Record]:
    """Tail a growing JSONL file: complete lines as they appear; a partial last line waits for its newline.
    A line over limits.max_record_bytes is not buffered whole: it becomes one bad record (its first bytes)."""
    lim = limits_of(limits)
    p = Path(path)
    n = 0
    buf = b""
    over: tuple[bytes, int] | None = None  # (first bytes, size so far) of an oversized line being skipped
    with p.open("rb") as f:
        while True:
            chunk = f.read(1 << 16)
            if chunk:
                if over is not None:
                    i = chunk.find(b"\n")
                    if i < 0:
                        over = (over[0], over[1] + len(chunk))
                        continue
                    n += 1
                    yield json_record(f"{p.name}:{n}", over[0], lim, size=over[1] + i, file=p.name, line=n)
                    over, chunk = None, chunk[i + 1:]
                buf += chunk
                *lines, buf = buf.split(b"\n")
                for line in lines:
                    n += 1
                    if line.strip():
                        yield json_record(f"{p.name}:{n}", line.rstrip(b"\r"), lim, file=p.name, line=n)
                if len(buf) > lim.max_record_bytes:
                    over, buf = (buf[:lim.dead_letter_excerpt_bytes], len(buf)), b""
                continue
            if stop is not None and stop.is_set():
                return
            time.sleep(poll_s)


# ------------------------------------------------------------------------- the feed
def feed_records(cfg: Config, records: Iterable[Record], publisher, *, split: str | None = None,
                 source: str = "", limit: int | None = None, seen: set[str] | None = None,
                 progress=None, stats: FeedStats | None = None) -> FeedStats:
    """Send Instructions for `records`; dead-letter the bad ones. Returns counts (not flushed: the caller
    flushes or closes the publisher). Pass `stats` to keep the counts when the loop is interrupted."""
    split = split or cfg.feed.default_split
    seen = set() if seen is None else seen
    stats = FeedStats() if stats is None else stats
    for rec in records:
        if limit is not None and stats.sent >= limit:
            break
        try:
            if rec.error:
                raise BadEvent(rec.error)
            ins = to_instruction(rec.data, split=split, source=source or rec.file or rec.source.rsplit(":", 1)[0],
                                 max_chars=cfg.feed.max_prompt_chars)
        except BadEvent as exc:
            stats.rejected += 1
            publisher.dead_letter(rec.source, exc.reason, rec.raw, stage="feed")
            log.info("rejected %s: %s", rec.source, exc.reason)
        else:
            if ins.id in seen:
                stats.duplicates += 1
            else:
                seen.add(ins.id)
                publisher.send(ins)
                stats.sent += 1
                stats.by_split[ins.split] = stats.by_split.get(ins.split, 0) + 1
        if progress is not None:
            progress()
    return stats

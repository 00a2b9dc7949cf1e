"""Judge pool: battles in, verdicts out (`arena judge`).

Each battle is judged in two games with positions swapped (or one, `judge.games = 1`), aggregated by the
configured policy.
Delivery is at-least-once: verdicts and dead letters are flushed (broker acked) before offsets are
committed; verdict ids are deterministic (battle, judge, policy) so redelivery is deduplicated downstream.
Judges: the reference judge (no model; verifiable tasks, the demo), any generation backend
(transformers, vLLM, OpenAI-compatible) behind a prompt template, batched per poll (consumers/judging/model.py),
or recorded judgments replayed (consumers/judging/replay.py).
"""
from __future__ import annotations

import hashlib
import json
import logging
import threading

from arena_flywheel.config import Config
from arena_flywheel.events import BadEvent, Battle, JudgeInfo, Verdict, decode
from arena_flywheel.kafka import IdleTimer, Publisher, ensure_topics, make_consumer
from consumers.judging.health import JudgeHealth
from consumers.judging.policies import POLICIES
from consumers.judging.protocol import orders_for, play_games
from consumers.judging.reference import reference_judge

log = logging.getLogger(__name__)

# The reference judge has no prompt; its "template" is its scoring rule, hashed so a change is visible.
_REFERENCE_RULE = "reference-v1: exact(normalised)=10, numeric final answer=9, else 1+8*difflib ratio"


class JudgePool:
    def __init__(self, cfg: Config):
        from arena_flywheel.cli import UsageError

        self.cfg = cfg
        jc = cfg.judge
        if jc.policy not in POLICIES:
            raise UsageError(f"judge policy {jc.policy!r} is not implemented yet; use one of {sorted(POLICIES)}")
        self.policy = POLICIES[jc.policy]
        self.model_judge = None
        self.infos: dict[str, JudgeInfo] = {}  # template id -> JudgeInfo, when the template varies per battle
        if jc.backend == "reference":
            if jc.policy == "arena-hard":  # the reference judge states scores, not [[A>>B]] labels
                raise UsageError("judge policy arena-hard needs a model judge; use score-sum or fastchat with reference")
            self.info = JudgeInfo(backend="reference", model="", template_id="reference-v1",
                                  template_hash=hashlib.sha256(_REFERENCE_RULE.encode()).hexdigest(), sampling={},
                                  games=jc.games)
        elif jc.backend == "replay":
            self.model_judge, self.info = _replay_judge(jc)
        else:
            self.model_judge, self.infos = _model_judge(jc)
            self.info = self.infos[jc.template]
        self.health = JudgeHealth()
        self.counts = {"battles": 0, "verdicts": 0, "invalid": 0, "dead_letters": 0}
        ensure_topics(cfg)
        self._pub = Publisher(cfg)
        self._consumer = make_consumer(cfg, [cfg.topic("battles")], f"{cfg.kafka.topic_prefix}judge")

    def judge(self, battle: Battle) -> Verdict:
        return self.judge_many([battle])[0]

    def judge_many(self, battles: list[Battle]) -> list[Verdict]:
        if self.model_judge is not None:
            all_games = self.model_judge.games(battles)  # one batched backend call for all games
        else:
            jc = self.cfg.judge
            all_games = [play_games(b, reference_judge, jc.max_parse_retries, orders_for(b, jc.games)) for b in battles]
        return [self._verdict(b, g) for b, g in zip(battles, all_games)]

    def _verdict(self, battle: Battle, games) -> Verdict:
        winner, sa, sb, margin = self.policy(games, self.cfg.judge.tie_margin)
        return Verdict(battle_id=battle.id, instruction_id=battle.instruction_id, split=battle.split,
                       competitor_a=battle.a.competitor, competitor_b=battle.b.competitor,
                       model_a=battle.a.model, model_b=battle.b.model,
                       checkpoint_a=battle.a.checkpoint, checkpoint_b=battle.b.checkpoint,
                       games=games, score_a=sa, score_b=sb, winner=winner, margin=margin,
                       policy=self.cfg.judge.policy, judge=self._info(battle))

    def _info(self, battle: Battle) -> JudgeInfo:
        if len(self.infos) > 1:  # a reference-guided template for this battle
            return self.infos[self.model_judge.template_for(battle).id]
        return self.info

    def poll_once(self, timeout_ms: int = 500) -> int:
        """Judge one polled batch; returns the number of records handled."""
        from kafka import TopicPartition
        from kafka.structs import OffsetAndMetadata

        batches = self._consumer.poll(timeout_ms=timeout_ms)
        records = [r for recs in batches.values() for r in recs]
        if not records:
            return 0
        battles = []
        for r in records:
            try:
                battles.append(decode(r.value, Battle))
            except BadEvent as exc:
                self._pub.dead_letter("battles", str(exc), r.value, stage="judge")
                self.counts["dead_letters"] += 1
        for battle, v in zip(battles, self.judge_many(battles) if battles else []):
            self._pub.send(v)
            self.counts["battles"] += 1
            self.counts["verdicts"] += 1
            self.counts["invalid"] += v.winner == "invalid"
            # the whole conversation's length: multi-turn battles are judged with every turn
            self.health.add(v, sum(map(len, battle.a.answers)), sum(map(len, battle.b.answers)))
        self._pub.flush()  # acked before the commit: at-least-once
        offsets: dict = {}
        for r in records:
            tp = TopicPartition(r.topic, r.partition)
            offsets[tp] = max(offsets.get(tp, 0), r.offset + 1)
        self._consumer.commit({tp: OffsetAndMetadata(o, "", -1) for tp, o in offsets.items()})
        return len(records)

    def run(self, stop_event: threading.Event | None = None, max_idle_s: float | None = None) -> dict:
        idle = IdleTimer(max_idle_s)
        try:
            while not (stop_event and stop_event.is_set()):
                if idle.expired(self._consumer, self.poll_once() > 0):
                    break
        finally:
            self.close()
        return self.stats()

    def stats(self) -> dict:
        return {**self.counts, "health": self.health.summary()}

    def close(self) -> None:
        try:
            self._consumer.close(autocommit=False)
        finally:
            self._pub.close()
            if self.model_judge is not None:
                self.model_judge.close()


def _model_judge(jc):
    """A ModelJudge for judge.backend / judge.model / judge.template (and judge.reference_template), and
    the JudgeInfo that names it per template id."""
    from arena_flywheel.cli import UsageError
    from consumers.backends import create_backend
    from consumers.backends.base import BackendError
    from consumers.judging.model import ModelJudge
    from consumers.judging.templates import load_template

    def load(key: str, name: str):
        try:
            return load_template(name)
        except KeyError as exc:
            raise UsageError(f"judge.{key}: {exc.args[0]}") from None

    template = load("template", jc.template)
    ref_template = load("reference_template", jc.reference_template) if jc.reference_template else None
    labels = "[[" in template.text  # the template asks for a verdict label rather than two scores
    if (jc.policy == "arena-hard" and not labels) or (jc.policy == "score-sum" and labels):
        raise UsageError(f"judge.policy {jc.policy!r} and judge.template {jc.template!r} do not match: "
                         "arena-hard reads [[A>>B]] labels (template pairwise-labels), score-sum reads two "
                         "scores (e.g. wizardarena-dual-score); fastchat reads either (e.g. pairwise-abc)")
    if ref_template is not None and (("[[" in ref_template.text) != labels or not ref_template.needs_reference):
        raise UsageError(f"judge.reference_template {jc.reference_template!r} must show {{reference}} and answer "
                         f"like judge.template {jc.template!r} ({'a [[...]] label' if labels else 'two scores'}): "
                         f"e.g. {'reference-guided-pairwise-abc' if labels else 'reference-guided-dual-score'}")
    try:
        backend = create_backend(jc)
    except BackendError as exc:
        raise UsageError(f"judge backend {jc.backend!r}: {exc}") from None
    sampling = {"temperature": jc.temperature, "max_new_tokens": jc.max_new_tokens}
    infos = {t.id: JudgeInfo(backend=jc.backend, model=jc.model, template_id=t.id, template_hash=t.sha256,
                             sampling=sampling, games=jc.games) for t in (template, ref_template) if t is not None}
    return ModelJudge(backend, template, labels=labels, max_new_tokens=jc.max_new_tokens, temperature=jc.temperature,
                      max_parse_retries=jc.max_parse_retries, games=jc.games, reference_template=ref_template,
                      reference_categories=tuple(jc.reference_categories)), infos


def _replay_judge(jc):
    """A ReplayJudge over judge.model's recordings, and the JudgeInfo that names it: the recorded judges
    as the model, the recordings' content hash as the template hash (other recordings, other judge)."""
    from arena_flywheel.cli import UsageError
    from consumers.backends.base import BackendError
    from consumers.judging.replay import RecordedJudgments, RecordingError, ReplayJudge

    try:
        rec = RecordedJudgments(jc.model, jc.recorded_answers)
    except (RecordingError, BackendError) as exc:  # BackendError: a file that is not JSON
        raise UsageError(f"judge replay: {exc}") from None
    if jc.policy == "score-sum" and not rec.kinds["scores"]:
        raise UsageError(f"judge replay: the recordings in {jc.model!r} state verdict labels, not scores; "
                         "use judge.policy = \"fastchat\" or \"arena-hard\"")
    if jc.policy == "arena-hard" and not rec.kinds["labels"]:
        raise UsageError(f"judge replay: the recordings in {jc.model!r} state scores, not [[A>>B]] labels; "
                         "use judge.policy = \"score-sum\" or \"fastchat\"")
    single = rec.single_order()
    if jc.games == 2 and single == len(rec.games):
        raise UsageError(f"judge replay: every recorded judgment in {jc.model!r} has one order only, so no battle "
                         "can be replayed in two games; set judge.games = 1 (position bias then averages out "
                         "over battles instead of cancelling per battle)")
    if jc.games == 2 and single:
        log.warning("replay judge: %d of %d recorded games have no swapped recording; their battles will be "
                    "invalid with judge.games = 2", single, len(rec.games))
    judges = sorted(rec.judges)
    model = "+".join(judges[:3]) + (f"+{len(judges) - 3} more" if len(judges) > 3 else "")
    log.info("replay judge: %d recorded games from %s (%d unresolved, %d conflicting)", len(rec.games),
             rec.path, rec.unresolved, rec.conflicts)
    info = JudgeInfo(backend="replay", model=model, template_id="recorded", template_hash=rec.sha256,
                     sampling={"recordings": rec.path}, games=jc.games)
    return ReplayJudge(rec, jc.games), info


def add_arguments(p) -> None:
    p.add_argument("--max-idle", type=float, default=None, help="stop after this many idle seconds")


def run(args, cfg: Config) -> int:
    from arena_flywheel.cli import UsageError

    if not cfg.kafka.bootstrap_servers:
        raise UsageError("arena judge needs a running broker: export KAFKA_BOOTSTRAP_SERVERS=host:port "
                         "(the address `arena broker` prints)")
    stats = JudgePool(cfg).run(max_idle_s=args.max_idle)
    print(json.dumps(stats, sort_keys=True), flush=True)
    return 0

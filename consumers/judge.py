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
import logging
import threading

from arena_flywheel.config import Config
from arena_flywheel.consume import Batch, ConsumerLoop, Service, run_loops
from arena_flywheel.errors import ConfigError
from arena_flywheel.events import Battle, JudgeInfo, Verdict
from arena_flywheel.kafka import ensure_topics
from consumers.backends import BackendError, create_backend
from consumers.judging.health import JudgeHealth
from consumers.judging.injection import measure_injection
from consumers.judging.model import ModelJudge
from consumers.judging.policies import POLICIES, policy_for
from consumers.judging.protocol import orders_for, play_games
from consumers.judging.reference import reference_judge
from consumers.judging.replay import RecordedJudgments, RecordingError, ReplayJudge
from consumers.judging.templates import load_template

log = logging.getLogger(__name__)

# The reference judge has no prompt; its "template" is its scoring rule, hashed so a change is visible.
_REFERENCE_RULE = "reference-v1: exact(normalised)=10, numeric final answer=9, else 1+8*difflib ratio"


def group_id(cfg: Config) -> str:
    return f"{cfg.kafka.topic_prefix}judge"


class JudgePool(Service):
    """Battles in, verdicts out: `run(stop_event, max_idle_s)`, or `poll_once()` + `close()`."""

    def __init__(self, cfg: Config, *, injection_probe: int | None = None):
        """injection_probe: probe this many battles for prompt injection (default judge.injection_probe);
        see _probe_injection."""
        self.cfg = cfg
        jc = cfg.judge
        self.injection_probe = jc.injection_probe if injection_probe is None else injection_probe
        if jc.policy not in POLICIES:
            raise ConfigError(f"judge policy {jc.policy!r} is not implemented yet; use one of {sorted(POLICIES)}")
        self.policy = policy_for(jc)  # score-sum with judge.combine (mean or sum)
        # the verdict's policy names a non-default combine, so its id differs from the mean's (ids dedupe)
        self.policy_name = f"{jc.policy}:sum" if jc.policy == "score-sum" and jc.combine == "sum" else jc.policy
        self.model_judge = None
        self.infos: dict[str, JudgeInfo] = {}  # template id -> JudgeInfo, when the template varies per battle
        if jc.backend == "reference":
            if jc.policy == "arena-hard":  # the reference judge states scores, not [[A>>B]] labels
                raise ConfigError("judge policy arena-hard needs a model judge; use score-sum or fastchat with reference")
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
        self.loop = ConsumerLoop(cfg, [cfg.topic("battles")], group_id(cfg), self.handle, expect=Battle,
                                 stage="judge", poll_timeout_ms=500).start()

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
                       policy=self.policy_name, judge=self._info(battle),
                       length_a=sum(map(len, battle.a.answers)), length_b=sum(map(len, battle.b.answers)))

    def _info(self, battle: Battle) -> JudgeInfo:
        if len(self.infos) > 1:  # a reference-guided template for this battle
            return self.infos[self.model_judge.template_for(battle).id]
        return self.info

    def handle(self, batch: Batch) -> None:
        """Judge one polled batch of battles (the consumer loop flushes and commits after)."""
        battles = [item.event for item in batch.items]
        self.counts["dead_letters"] = self.loop.stats.dead_letters  # records that did not decode
        for battle, v in zip(battles, self.judge_many(battles) if battles else []):
            self.loop.publisher.send(v)
            self.counts["battles"] += 1
            self.counts["verdicts"] += 1
            self.counts["invalid"] += v.winner == "invalid"
            self.health.add(v)  # the verdict carries both answers' lengths (all turns)
        self._probe_injection(battles)

    def _probe_injection(self, battles: list[Battle]) -> None:
        """The injection probe (consumers/judging/injection.py) on the first `injection_probe` battles this
        pool judges: each is judged once more as answer X against X + an injection suffix, by this pool's
        judge and policy; the outcomes go to the health (injection_rate), the probe verdicts are not
        published."""
        left = self.injection_probe - self.health.injection.probes
        if left > 0 and battles:
            measure_injection(lambda bs: [v.winner for v in self.judge_many(bs)], battles[:left],
                              tally=self.health.injection, start=self.health.injection.probes)

    def poll_once(self, timeout_ms: int = 500) -> int:
        """Judge one polled batch; returns the number of records handled."""
        return self.loop.poll_once(timeout_ms)

    def run(self, stop_event: threading.Event | None = None, max_idle_s: float | None = None) -> dict:
        run_loops([self.loop], stop_event, max_idle_s, close=self._close_judge)
        return self.stats()

    def stats(self) -> dict:
        return {**self.counts, "health": self.health.summary()}

    def close(self) -> None:
        try:
            self.loop.close()
        finally:
            self._close_judge()

    def _close_judge(self) -> None:
        if self.model_judge is not None:
            self.model_judge.close()
            self.model_judge = None


def _model_judge(jc):
    """A ModelJudge for judge.backend / judge.model / judge.template (and judge.reference_template), and
    the JudgeInfo that names it per template id."""
    def load(key: str, name: str):
        try:
            return load_template(name)
        except KeyError as exc:
            raise ConfigError(f"judge.{key}: {exc.args[0]}") from None

    template = load("template", jc.template)
    ref_template = load("reference_template", jc.reference_template) if jc.reference_template else None
    labels = "[[" in template.text  # the template asks for a verdict label rather than two scores
    if (jc.policy == "arena-hard" and not labels) or (jc.policy == "score-sum" and labels):
        raise ConfigError(f"judge.policy {jc.policy!r} and judge.template {jc.template!r} do not match: "
                         "arena-hard reads [[A>>B]] labels (template pairwise-labels), score-sum reads two "
                         "scores (e.g. wizardarena-dual-score); fastchat reads either (e.g. pairwise-abc)")
    if ref_template is not None and (("[[" in ref_template.text) != labels or not ref_template.needs_reference):
        raise ConfigError(f"judge.reference_template {jc.reference_template!r} must show {{reference}} and answer "
                         f"like judge.template {jc.template!r} ({'a [[...]] label' if labels else 'two scores'}): "
                         f"e.g. {'reference-guided-pairwise-abc' if labels else 'reference-guided-dual-score'}")
    try:
        backend = create_backend(jc)
    except BackendError as exc:
        raise ConfigError(f"judge backend {jc.backend!r}: {exc}") from None
    sampling = {"temperature": jc.temperature, "max_new_tokens": jc.max_new_tokens}
    infos = {t.id: JudgeInfo(backend=jc.backend, model=jc.model, template_id=t.id, template_hash=t.sha256,
                             sampling=sampling, games=jc.games) for t in (template, ref_template) if t is not None}
    return ModelJudge(backend, template, labels=labels, max_new_tokens=jc.max_new_tokens, temperature=jc.temperature,
                      max_parse_retries=jc.max_parse_retries, games=jc.games, reference_template=ref_template,
                      reference_categories=tuple(jc.reference_categories)), infos


def _replay_judge(jc):
    """A ReplayJudge over judge.model's recordings, and the JudgeInfo that names it: the recorded judges
    as the model, the recordings' content hash as the template hash (other recordings, other judge)."""
    try:
        rec = RecordedJudgments(jc.model, jc.recorded_answers)
    except (RecordingError, BackendError) as exc:  # BackendError: a file that is not JSON
        raise ConfigError(f"judge replay: {exc}") from None
    if jc.policy == "score-sum" and not rec.kinds["scores"]:
        raise ConfigError(f"judge replay: the recordings in {jc.model!r} state verdict labels, not scores; "
                         "use judge.policy = \"fastchat\" or \"arena-hard\"")
    if jc.policy == "arena-hard" and not rec.kinds["labels"]:
        raise ConfigError(f"judge replay: the recordings in {jc.model!r} state scores, not [[A>>B]] labels; "
                         "use judge.policy = \"score-sum\" or \"fastchat\"")
    single = rec.single_order()
    if jc.games == 2 and single == len(rec.games):
        raise ConfigError(f"judge replay: every recorded judgment in {jc.model!r} has one order only, so no battle "
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

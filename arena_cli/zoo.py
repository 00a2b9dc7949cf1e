"""The demo's zoo: tiny competitor models of clearly different strength, trained on the spot.

One SFT run (TRL) of a tiny Llama on the generated verifiable tasks, snapshotted at increasing step
counts: the early snapshot is weak (the flywheel's target), the late ones strong. One run makes the
whole zoo, so its cost is that of the strongest model. Cached by a hash of its recipe, so the
second demo starts at once.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

from arena_flywheel.events import stable_hash
from arena_flywheel.tinymodel import build_tiny_model
from producers import tasks
from trainer.train import quiet

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ZooRecipe:
    snapshots: tuple[tuple[str, int], ...]  # (competitor name, SFT steps), increasing steps
    train_examples: int = 3000
    batch_size: int = 32
    learning_rate: float = 6e-3
    hidden_size: int = 96
    layers: int = 3
    heads: int = 4
    vocab_size: int = 400
    seed: int = 0
    version: int = 2  # bump when the task family or training code changes (2: fp32 training on CPU)

    @property
    def key(self) -> str:
        return stable_hash(asdict(self), length=12)


# Measured (2 cores): 400 steps in ~65 s (fp32; TRL's default bf16 autocast took 340 s); eval mean reference scores (1-10) 1.4 / 3.1 / 4.1 / 5.0.
# The target is weak enough that the flywheel has room, strong enough to learn from ~100 failures.
DEMO = ZooRecipe(snapshots=(("target", 20), ("novice", 80), ("solid", 200), ("ace", 400)), train_examples=2000)


def default_cache() -> Path:
    """Where zoos are cached across data dirs: $ARENA_ZOO_CACHE, else the user's cache dir."""
    if os.environ.get("ARENA_ZOO_CACHE"):
        return Path(os.environ["ARENA_ZOO_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "arena-flywheel" / "zoo"


def zoo_paths(root: Path, recipe: ZooRecipe) -> dict[str, Path]:
    return {name: root / recipe.key / name for name, _ in recipe.snapshots}


def _complete(root: Path, recipe: ZooRecipe) -> bool:
    return (root / recipe.key / "zoo.json").is_file() and all(
        (p / "config.json").is_file() for p in zoo_paths(root, recipe).values())


def build_zoo(root: str | Path | None = None, recipe: ZooRecipe = DEMO, progress=None) -> dict[str, Path]:
    """Return {competitor name: model dir}, training the zoo unless a complete cached copy exists.

    Built in a scratch dir and renamed into place under a file lock, so concurrent demos (or a demo
    killed halfway) never see half a zoo.
    """
    import fcntl

    root = Path(root) if root is not None else default_cache()
    root.mkdir(parents=True, exist_ok=True)
    if _complete(root, recipe):
        return zoo_paths(root, recipe)
    with open(root / f".{recipe.key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second builder waits, then finds the zoo complete
        if not _complete(root, recipe):
            scratch = root / f".{recipe.key}.building"
            shutil.rmtree(scratch, ignore_errors=True)
            _train(scratch, recipe, progress)
            paths = zoo_paths(root, recipe)  # where the models are once renamed into place
            (scratch / "zoo.json").write_text(json.dumps(
                {"recipe": asdict(recipe), "models": {k: str(v) for k, v in paths.items()}}))
            shutil.rmtree(root / recipe.key, ignore_errors=True)
            scratch.rename(root / recipe.key)  # the marker arrives with the models, in one rename
    return zoo_paths(root, recipe)


def _train(work: Path, recipe: ZooRecipe, progress) -> None:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer


    base = build_tiny_model(work / "base", tasks.corpus(), vocab_size=recipe.vocab_size,
                            hidden_size=recipe.hidden_size, layers=recipe.layers, heads=recipe.heads,
                            seed=recipe.seed)
    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForCausalLM.from_pretrained(base)
    # Zoo training data comes from a seed of its own: the demo's train/eval instructions differ.
    rows = [{"prompt": [{"role": "user", "content": i.messages[0].content}],
             "completion": [{"role": "assistant", "content": i.reference}]}
            for i in tasks.generate(recipe.train_examples, seed=10_000 + recipe.seed, split="train")]
    at = {steps: name for name, steps in recipe.snapshots}

    class Snapshot(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            name = at.get(state.global_step)
            if name:
                kw["model"].save_pretrained(work / name)
                tok.save_pretrained(work / name)
                if progress:
                    progress(name, state.global_step)

    args = SFTConfig(output_dir=str(work / "trainer"), max_steps=max(at), per_device_train_batch_size=recipe.batch_size,
                     learning_rate=recipe.learning_rate, lr_scheduler_type="constant_with_warmup", warmup_steps=10,
                     use_cpu=not _cuda(), report_to=[], save_strategy="no", logging_steps=50, max_length=64,
                     seed=recipe.seed, disable_tqdm=True, dataloader_num_workers=0,
                     bf16=_cuda())  # TRL defaults to bf16 autocast, ~6x slower on CPUs without bf16 units
    trainer = quiet(SFTTrainer(model=model, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok,
                               callbacks=[Snapshot()]))
    trainer.train()
    shutil.rmtree(work / "trainer", ignore_errors=True)


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()

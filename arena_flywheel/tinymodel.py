"""Tiny real causal LMs, built from a config with a tokenizer trained locally: no hub, no network.

Used by the tests (a real model in milliseconds) and by the demo's zoo (models then trained on
verifiable tasks). The tokenizer is a byte-level BPE with a ChatML chat template, so every
transformers/TRL code path (apply_chat_template, SFT/DPO collators) works as with a real model.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL_TOKENS = ["<|pad|>", "<|im_start|>", "<|im_end|>", "<|endoftext|>"]

_DEFAULT_CORPUS = [
    "You are a helpful assistant. Answer the question briefly and exactly.",
    "What is 12 + 30? The answer is 42.",
    "Reverse the words: red green blue -> blue green red",
    "Sort the words: pear apple fig -> apple fig pear",
    "Count the letters in banana: 6",
    "Copy the text in upper case: hello world -> HELLO WORLD",
    "The quick brown fox jumps over the lazy dog. 0 1 2 3 4 5 6 7 8 9 + - * / = ? ! , . : ;",
    "Explain why the sky is blue in one sentence.",
    "user assistant system",
]


def train_tokenizer(out_dir: str | Path, corpus: Iterable[str] | None = None, vocab_size: int = 512):
    """Train a byte-level BPE tokenizer on `corpus` and save it as a transformers tokenizer with ChatML."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = list(corpus) if corpus is not None else []
    texts += _DEFAULT_CORPUS
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<|pad|>", eos_token="<|im_end|>",
                                   bos_token=None, unk_token=None,
                                   additional_special_tokens=["<|im_start|>", "<|endoftext|>"])
    fast.chat_template = CHATML_TEMPLATE
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(out)
    return fast


def build_tiny_model(out_dir: str | Path, corpus: Iterable[str] | None = None, *, vocab_size: int = 512,
                     hidden_size: int = 64, layers: int = 2, heads: int = 4, max_positions: int = 512,
                     seed: int = 0) -> Path:
    """Write a randomly initialised tiny Llama and its locally trained tokenizer to `out_dir`.

    Loadable with AutoModelForCausalLM / AutoTokenizer.from_pretrained(out_dir). Returns the path.
    """
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out = Path(out_dir)
    tok = train_tokenizer(out, corpus, vocab_size=vocab_size)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tok), hidden_size=hidden_size, intermediate_size=hidden_size * 2,
        num_hidden_layers=layers, num_attention_heads=heads, num_key_value_heads=heads,
        max_position_embeddings=max_positions, rms_norm_eps=1e-5, tie_word_embeddings=True,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None,
    )
    model = LlamaForCausalLM(config)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.generation_config.eos_token_id = tok.eos_token_id
    model.save_pretrained(out)
    (out / "arena_tiny.json").write_text(json.dumps({"seed": seed, "hidden_size": hidden_size, "layers": layers}))
    return out

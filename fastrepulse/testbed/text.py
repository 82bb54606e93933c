"""Offline text components: character-level CLIP and T5 tokenizers and small encoders, built from arguments.

The testbed pipelines use them with their trained weights; the tests' tiny pipelines use them as they are.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
from collections.abc import Sequence

from tokenizers import Regex, Tokenizer, pre_tokenizers, processors
from tokenizers.models import WordLevel
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    PreTrainedTokenizerFast,
    T5Config,
    T5EncoderModel,
)


@functools.cache
def _clip_vocab_dir() -> tempfile.TemporaryDirectory:
    """Byte-level CLIP vocab (every byte alone and as a word end) with no merges, written once per process."""
    directory = tempfile.TemporaryDirectory(prefix="fastrepulse-clip-")  # kept alive by the cache, removed at exit
    chars = sorted(pre_tokenizers.ByteLevel.alphabet())  # unsorted, its order changes from process to process
    tokens = [*chars, *(c + "</w>" for c in chars), "<|startoftext|>", "<|endoftext|>"]
    with open(os.path.join(directory.name, "vocab.json"), "w", encoding="utf-8") as f:
        json.dump({t: i for i, t in enumerate(tokens)}, f)
    with open(os.path.join(directory.name, "merges.txt"), "w", encoding="utf-8") as f:
        f.write("#version: 0.2\n")
    return directory


def clip_tokenizer(max_length: int) -> CLIPTokenizer:
    """Character-level CLIP tokenizer; paths are positional because transformers 5 ignores them as keywords."""
    directory = _clip_vocab_dir().name
    vocab, merges = (os.path.join(directory, name) for name in ("vocab.json", "merges.txt"))
    return CLIPTokenizer(vocab, merges, model_max_length=max_length)


def clip_encoder(
    cls: type[CLIPTextModel | CLIPTextModelWithProjection],
    width: int,
    max_length: int,
    vocab_size: int = 2 * 256 + 2,
    bos: int = 2 * 256,
    eos: int = 2 * 256 + 1,
) -> CLIPTextModel | CLIPTextModelWithProjection:
    """Two-layer CLIP text encoder; two layers because SD3 reads the penultimate hidden state. The default ids are
    those of `clip_tokenizer`'s vocab, where <|endoftext|> also pads."""
    config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=width,
        intermediate_size=2 * width,
        projection_dim=width,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=max_length,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=eos,
    )
    return cls(config)


def t5_tokenizer() -> PreTrainedTokenizerFast:
    """One token per printable ASCII character, closed by </s> as T5 does."""
    vocab = {t: i for i, t in enumerate(["<pad>", "</s>", "<unk>", *map(chr, range(32, 127))])}
    tokenizer = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tokenizer.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", model_max_length=512
    )


def t5_encoder(d_model: int, vocab_size: int = 128) -> T5EncoderModel:
    """Two-layer T5 encoder; its width is the transformer's joint_attention_dim."""
    config = T5Config(
        vocab_size=vocab_size, d_model=d_model, d_kv=16, d_ff=2 * d_model, num_layers=2, num_heads=4,
        relative_attention_num_buckets=8,
    )  # fmt: skip
    return T5EncoderModel(config)


def word_tokenizer(
    words: Sequence[str], *, start: str | None, end: str, pad: str, max_length: int
) -> PreTrainedTokenizerFast:
    """A tokenizer of one token per whitespace-separated word of `words` (anything else: "<unk>"), each text closed
    by `end` and opened by `start` if given: T5's convention with ``start=None``, CLIP's with its start token."""
    specials = [pad, end, "<unk>"] if start is None else [start, end, "<unk>"]
    vocab = {token: index for index, token in enumerate(dict.fromkeys([*specials, *words]))}
    tokenizer = Tokenizer(WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    single = f"$A {end}" if start is None else f"{start} $A {end}"
    tokens = [(end, vocab[end])] if start is None else [(start, vocab[start]), (end, vocab[end])]
    tokenizer.post_processor = processors.TemplateProcessing(single=single, special_tokens=tokens)
    named = {"pad_token": pad, "eos_token": end, "unk_token": "<unk>"}
    if start is not None:
        named["bos_token"] = start
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, model_max_length=max_length, **named)

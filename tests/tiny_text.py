"""A character-level tokenizer for the tiny pipelines of the newer families (LLM text encoders), built offline.

Every printable ASCII character is one token, and the special tokens a pipeline's prompt template names (chat
markers, pads) are tokens of their own, so any template tokenizes without a hub vocabulary.
"""

from __future__ import annotations

from tokenizers import Regex, Tokenizer, pre_tokenizers
from tokenizers.models import WordLevel
from transformers import PreTrainedTokenizerFast

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}{% if part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
"""A ChatML template (Qwen's markers), enough for pipelines that call ``apply_chat_template``."""


def char_tokenizer(
    max_length: int = 512,
    special_tokens: tuple[str, ...] = ("<|im_start|>", "<|im_end|>", "<|endoftext|>"),
    pad_token: str = "<pad>",
    padding_side: str = "right",
) -> PreTrainedTokenizerFast:
    """One token per printable ASCII character (and newline), plus `special_tokens` and `pad_token` (id 0)."""
    tokens = [pad_token, "<unk>", *special_tokens, "\n", *map(chr, range(32, 127))]
    tokenizer = Tokenizer(WordLevel({token: i for i, token in enumerate(tokens)}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token=pad_token,
        unk_token="<unk>",
        additional_special_tokens=list(special_tokens),
        model_max_length=max_length,
        padding_side=padding_side,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def vocab_size(tokenizer: PreTrainedTokenizerFast) -> int:
    """Embedding rows a text encoder needs for `tokenizer`."""
    return len(tokenizer)

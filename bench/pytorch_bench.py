"""PyTorch side of `scripts/bench.sh`: the original project's model (transformers' BertModel + the
two heads) at the same batch x token shapes as `viralclip bench`, one JSON line per case.

    python bench/pytorch_bench.py --shapes 1x128,32x128 --dtypes f32,bf16 [--encoder DIR] [--rubert-shape]
"""
import argparse
import json
import os
import time

import torch
from torch import nn
from transformers import BertConfig, BertModel


class MultiTask(nn.Module):
    def __init__(self, bert, hidden, labels=28):
        super().__init__()
        self.bert = bert
        self.popularity_head = nn.Sequential(nn.Linear(hidden, 256), nn.ReLU(), nn.Dropout(0.3),
                                             nn.Linear(256, 128), nn.ReLU(), nn.Dropout(0.2), nn.Linear(128, 1))
        self.emotion_head = nn.Sequential(nn.Linear(hidden, 256), nn.ReLU(), nn.Dropout(0.3), nn.Linear(256, labels))

    def forward(self, ids, mask):
        cls = self.bert(input_ids=ids, attention_mask=mask).last_hidden_state[:, 0]
        return self.popularity_head(cls).squeeze(-1), self.emotion_head(cls)


def rubert_config():
    return BertConfig(vocab_size=120138, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                      intermediate_size=3072, max_position_embeddings=512)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--shapes", default="1x128,8x128,32x32,32x128")
    ap.add_argument("--dtypes", default="f32")
    ap.add_argument("--encoder", action="append", default=[])
    ap.add_argument("--rubert-shape", action="store_true")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--secs", type=float, default=3.0)
    a = ap.parse_args()
    dev = torch.device(a.device)
    models = [(os.path.basename(p.rstrip("/")), p) for p in a.encoder]
    if a.rubert_shape:
        models.append(("rubert-base-shape", None))
    shapes = [tuple(int(x) for x in s.split("x")) for s in a.shapes.split(",")]
    for name, path in models:
        for dt in a.dtypes.split(","):
            dtype = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}[dt]
            if path:
                bert = BertModel.from_pretrained(path, add_pooling_layer=False, attn_implementation="sdpa")
            else:
                bert = BertModel(rubert_config(), add_pooling_layer=False)
            model = MultiTask(bert, bert.config.hidden_size).to(dev, dtype).eval()
            vocab = bert.config.vocab_size
            for b, t in shapes:
                g = torch.Generator().manual_seed(12345)
                ids = torch.randint(5, vocab - 5, (b, t), generator=g).to(dev)
                mask = torch.ones(b, t, dtype=torch.long, device=dev)
                with torch.inference_mode():
                    def run():
                        p, e = model(ids, mask)
                        e.float().sum().item()
                    run()
                    runs, start = 0, time.perf_counter()
                    while runs < 2 or time.perf_counter() - start < a.secs:
                        run()
                        runs += 1
                    secs = (time.perf_counter() - start) / runs
                print(json.dumps({
                    "case": "score", "engine": f"pytorch-{torch.__version__}", "model": name,
                    "device": dev.type, "threads": torch.get_num_threads(), "dtype": dt.replace("f32", "f32"),
                    "batch": b, "tokens": t, "texts_per_s": round(b / secs, 1), "ms_per_batch": round(secs * 1e3, 2),
                    "runs": runs}), flush=True)


if __name__ == "__main__":
    main()

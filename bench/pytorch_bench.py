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
    ap.add_argument("--train-steps", action="store_true",
                    help="also time the seed's training steps (batch 16 x 128, fp32/TF32 like the seed)")
    ap.add_argument("--no-score", action="store_true")
    a = ap.parse_args()
    dev = torch.device(a.device)
    models = [(os.path.basename(p.rstrip("/")), p) for p in a.encoder]
    if a.rubert_shape:
        models.append(("rubert-base-shape", None))
    shapes = [tuple(int(x) for x in s.split("x")) for s in a.shapes.split(",")]
    if a.train_steps:
        for name, path in models:
            train_steps(name, path, dev, a.secs)
        torch.backends.cuda.matmul.allow_tf32 = False  # scoring in f32 means f32
        torch.backends.cudnn.allow_tf32 = False
    for name, path in ([] if a.no_score else models):
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


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def timed(dev, secs, f):
    f(); f(); sync(dev)
    n, start = 0, time.perf_counter()
    while n < 3 or time.perf_counter() - start < secs:
        f()
        n += 1
    sync(dev)
    return (time.perf_counter() - start) * 1e3 / n, n


def train_steps(name, path, dev, secs, batch=16, tokens=128, top=2):
    """The seed's loop: frozen encoder forward, then heads only; or the top 2 layers unfrozen with
    PCGrad (per-task backward passes, projection of conflicting gradients), AdamW, clip 1.0."""
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    bert = BertModel.from_pretrained(path, add_pooling_layer=False) if path else BertModel(rubert_config(), add_pooling_layer=False)
    model = MultiTask(bert, bert.config.hidden_size).to(dev).train()
    n_layers = bert.config.num_hidden_layers
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(5, bert.config.vocab_size - 5, (batch, tokens), generator=g).to(dev)
    mask = torch.ones(batch, tokens, dtype=torch.long, device=dev)
    pop_rows = torch.arange(0, batch, 2, device=dev)
    emo_rows = torch.arange(1, batch, 2, device=dev)
    pop_y = (torch.arange(0, batch, 2, device=dev) % 4 == 0).float()
    emo_y = torch.zeros(len(emo_rows), 28, device=dev)
    for j, k in enumerate(range(1, batch, 2)):
        emo_y[j, k % 28] = 1
        emo_y[j, (k * 7) % 28] = 1
    bce = nn.BCEWithLogitsLoss()
    bce_e = nn.BCEWithLogitsLoss(pos_weight=torch.ones(28, device=dev))
    heads = list(model.popularity_head.parameters()) + list(model.emotion_head.parameters())

    def set_trainable(top_n):
        for p in model.bert.parameters():
            p.requires_grad = False
        shared = []
        for layer in model.bert.encoder.layer[n_layers - top_n:] if top_n else []:
            for p in layer.parameters():
                p.requires_grad = True
                shared.append(p)
        return shared

    def losses():
        p, e = model(ids, mask)
        return bce(p[pop_rows], pop_y), bce_e(e[emo_rows], emo_y)

    shared = set_trainable(0)
    opt = torch.optim.AdamW(heads, lr=2e-5, weight_decay=0.01)

    def heads_step():
        opt.zero_grad(set_to_none=True)
        lp, le = losses()
        (lp + le).backward()
        torch.nn.utils.clip_grad_norm_(heads, 1.0)
        opt.step()

    results = [("heads", *timed(dev, secs, heads_step))]
    shared = set_trainable(top)
    opt = torch.optim.AdamW([{"params": heads}, {"params": shared, "lr": 2e-6}], lr=2e-5, weight_decay=0.01)

    def pcgrad_step():
        opt.zero_grad(set_to_none=True)
        lp, le = losses()
        g1 = torch.autograd.grad(lp, shared + heads, retain_graph=True, allow_unused=True)
        g2 = torch.autograd.grad(le, shared + heads, allow_unused=True)
        n = len(shared)
        a = [x if x is not None else torch.zeros_like(p) for x, p in zip(g1[:n], shared)]
        b = [x if x is not None else torch.zeros_like(p) for x, p in zip(g2[:n], shared)]
        d = sum((x * y).sum() for x, y in zip(a, b))
        n1 = sum((x * x).sum() for x in a)
        n2 = sum((y * y).sum() for y in b)
        if d < 0:
            merged = [x - d / n2 * y + y - d / n1 * x for x, y in zip(a, b)]
        else:
            merged = [x + y for x, y in zip(a, b)]
        for p, gm in zip(shared, merged):
            p.grad = gm
        for p, x, y in zip(heads, g1[n:], g2[n:]):
            p.grad = (x if x is not None else 0) + (y if y is not None else 0)
        torch.nn.utils.clip_grad_norm_(shared + heads, 1.0)
        opt.step()

    results.append((f"top{top}+pcgrad+frozen-forward", *timed(dev, secs, pcgrad_step)))
    for stage, ms, n in results:
        print(json.dumps({
            "case": "train_step", "engine": f"pytorch-{torch.__version__}", "model": name, "device": dev.type,
            "threads": torch.get_num_threads(), "dtype": "f32 (tf32 on cuda)", "batch": batch, "tokens": tokens,
            "stage": stage, "ms_per_step": round(ms, 2), "runs": n}), flush=True)
    ms = dict((s, m) for s, m, _ in results)
    print(json.dumps({
        "case": "train_schedule", "engine": f"pytorch-{torch.__version__}", "model": name, "device": dev.type,
        "steps_per_epoch": 3067, "epochs": "2 heads + 3 top-2 with PCGrad",
        "estimate_s_seed_loop": round((2 * ms["heads"] + 3 * ms[f"top{top}+pcgrad+frozen-forward"]) * 3067 / 1e3, 1)}),
        flush=True)


if __name__ == "__main__":
    main()

"""Makes the PyTorch-parity fixture: a tiny ViralBERT v2 multitask model saved exactly as the
original project saves `multitask_best.pth`, the inputs, and PyTorch's outputs for them.

Run once (needs torch and transformers), commit the outputs:
    python tests/parity/make_fixture.py tests/parity
The Rust test `engine/tests/parity.rs` imports the checkpoint and must match within 1e-4.
"""
import json
import sys
from pathlib import Path

import torch
from torch import nn
from transformers import BertConfig, BertModel


class MultiTaskClassifier(nn.Module):
    """The seed's model: BERT [CLS] -> popularity head and emotion head."""

    def __init__(self, config, num_emotions=28):
        super().__init__()
        self.bert = BertModel(config)
        h = config.hidden_size
        self.popularity_head = nn.Sequential(
            nn.Linear(h, 256), nn.ReLU(), nn.Dropout(0.3),
            nn.Linear(256, 128), nn.ReLU(), nn.Dropout(0.2),
            nn.Linear(128, 1),
        )
        self.emotion_head = nn.Sequential(
            nn.Linear(h, 256), nn.ReLU(), nn.Dropout(0.3),
            nn.Linear(256, num_emotions),
        )

    def forward(self, input_ids, attention_mask):
        cls = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[:, 0]
        return self.popularity_head(cls).squeeze(-1), self.emotion_head(cls)


def main(out: Path):
    torch.manual_seed(20251126)
    config = BertConfig(
        vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=37, max_position_embeddings=64, type_vocab_size=2,
        hidden_act="gelu", layer_norm_eps=1e-12, attn_implementation="eager",
    )
    model = MultiTaskClassifier(config).eval()
    # Larger than the default init (std 0.02) so that every layer visibly matters.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    lengths = [7, 12, 4]
    t = max(lengths)
    ids = torch.zeros(len(lengths), t, dtype=torch.long)
    mask = torch.zeros(len(lengths), t, dtype=torch.long)
    for i, n in enumerate(lengths):
        ids[i, :n] = torch.randint(1, config.vocab_size, (n,))
        mask[i, :n] = 1
    with torch.no_grad():
        pop, emo = model(ids, mask)
    out.mkdir(parents=True, exist_ok=True)
    torch.save({"model_state_dict": model.state_dict(), "epoch": 4, "val_loss": 0.2828},
               out / "multitask_best.pth")
    cfg = {k: v for k, v in config.to_dict().items() if k in (
        "vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
        "intermediate_size", "hidden_act", "max_position_embeddings", "type_vocab_size",
        "layer_norm_eps", "pad_token_id", "model_type", "position_embedding_type")}
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    (out / "expected.json").write_text(json.dumps({
        "torch": torch.__version__,
        "input_ids": ids.tolist(),
        "attention_mask": mask.tolist(),
        "popularity_logits": pop.tolist(),
        "emotion_logits": emo.tolist(),
    }) + "\n")
    print(f"wrote {out}: {sum(p.numel() for p in model.parameters())} parameters")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent))

"""Run inside the Xinference environment: write a tiny embedding model and a tiny rerank model,
and compute what they must answer directly from their weights.

    python tiny_encoders.py OUT_DIR TEXTS_JSON

No hub: a WordPiece vocabulary written here, seeded BERT weights (transformers), saved as a
sentence-transformers directory (Transformer + mean Pooling) and as a one-label
BertForSequenceClassification (what sentence-transformers' CrossEncoder loads). The direct
computation uses transformers' BERT forward alone, with the pooling and activation written
out here, not sentence-transformers' or Xinference's code. Prints one JSON line.
"""

from __future__ import annotations

import json
import string
import sys
from pathlib import Path

import torch
from transformers import BertConfig, BertForSequenceClassification, BertModel, BertTokenizerFast

_WORDS_TEXT = (
    "the a of and to in is it that was for on are with as be at by this have from or one had not "
    "but what all were when we there can an your which their said if do will each about how up out "
    "them then she many some so these would other into has more her two like him see time could no "
    "make than first been its who now people my made over did down only way find use may water long "
    "little very after words called just where most know get through back much before go good new "
    "write our used me man too any day same right look think also around another came come work "
    "three word must because does part cat dog fish bird tree river city car paris france capital"
)
WORDS = _WORDS_TEXT.split()


def tokenizer(work: Path) -> BertTokenizerFast:
    letters = list(string.ascii_lowercase + string.digits + string.punctuation)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *letters, *dict.fromkeys(WORDS)]
    vocab += ["##" + c for c in string.ascii_lowercase + string.digits]
    work.mkdir(parents=True, exist_ok=True)
    (work / "vocab.txt").write_text("\n".join(vocab) + "\n")
    return BertTokenizerFast(vocab_file=str(work / "vocab.txt"), do_lower_case=True)


def config(vocab_size: int, **extra) -> BertConfig:
    # 32 wide, 2 layers: loads in well under a second; a larger init spread than BERT's 0.02 so
    # different texts give clearly different vectors.
    return BertConfig(
        vocab_size=vocab_size,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
        initializer_range=0.2,
        **extra,
    )


def main() -> None:
    out, texts = Path(sys.argv[1]), json.loads(sys.argv[2])
    tok = tokenizer(out / "vocab")
    torch.manual_seed(0)
    encoder = BertModel(config(tok.vocab_size), add_pooling_layer=False).eval()
    hf = out / "embedding-hf"
    encoder.save_pretrained(hf)
    tok.save_pretrained(hf)

    from sentence_transformers import SentenceTransformer, models  # type: ignore[import-not-found]

    st = SentenceTransformer(
        modules=[models.Transformer(str(hf), max_seq_length=64), models.Pooling(32, pooling_mode="mean")],
        device="cpu",
    )
    st.save(str(out / "embedding"))

    torch.manual_seed(1)
    scorer = BertForSequenceClassification(config(tok.vocab_size, num_labels=1)).eval()
    scorer.save_pretrained(out / "rerank")
    tok.save_pretrained(out / "rerank")

    # The direct computation, from the saved weights.
    encoder = BertModel.from_pretrained(hf, add_pooling_layer=False).eval()
    scorer = BertForSequenceClassification.from_pretrained(out / "rerank").eval()
    with torch.no_grad():
        enc = tok(texts["inputs"], padding=True, truncation=True, max_length=64, return_tensors="pt")
        hidden = encoder(**enc).last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        vectors = mean / mean.norm(dim=1, keepdim=True).clamp(min=1e-12)
        pairs = tok(
            [texts["query"]] * len(texts["documents"]),
            texts["documents"],
            padding=True,
            truncation=True,
            max_length=64,
            return_tensors="pt",
        )
        scores = torch.sigmoid(scorer(**pairs).logits[:, 0])
    print(
        json.dumps(
            {
                "embedding_dir": str(out / "embedding"),
                "rerank_dir": str(out / "rerank"),
                "dimensions": 32,
                "embeddings": vectors.tolist(),
                "rerank_scores": scores.tolist(),
            }
        )
    )


if __name__ == "__main__":
    main()

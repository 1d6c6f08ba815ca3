"""Small Hugging Face text models built locally (no model hub is reachable from here).

A WordPiece tokenizer is trained with the `tokenizers` package on a few sentences and a
BERT of a few thousand to a few million parameters is built around it and saved with
`save_pretrained` (safetensors). The demo and the tests use these; they are not meant to
be good models, only real ones: the same files a user's fine-tuned BERT has.
"""

from __future__ import annotations

import tarfile
import zipfile
from pathlib import Path

import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
DEFAULT_CORPUS = [
    "Paris is the capital of France.",
    "Berlin is the capital of Germany.",
    "Rome is the capital of Italy.",
    "Madrid is the capital of Spain.",
    "The portal serves language models to every team.",
    "This movie was wonderful and the actors were great.",
    "This movie was terrible and the plot was boring.",
    "I love this product, it works perfectly.",
    "I hate this product, it broke after one day.",
    "Alice lives in London and works at Acme.",
]
ARCHITECTURES: dict[str, type[PreTrainedModel]] = {
    "fill-mask": BertForMaskedLM,
    "text-classification": BertForSequenceClassification,
    "token-classification": BertForTokenClassification,
    "feature-extraction": BertModel,
}


def tokenizer_train(corpus: list[str], vocab_size: int = 400, max_length: int = 64) -> PreTrainedTokenizerFast:
    """A lower-casing BERT-style WordPiece tokenizer trained on `corpus`."""
    tokenizer = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS)
    tokenizer.train_from_iterator(corpus, trainer)
    cls, sep = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=max_length,
    )


def bert_build(
    task: str,
    tokenizer: PreTrainedTokenizerFast,
    *,
    labels: list[str] | None = None,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 2,
    seed: int = 0,
) -> PreTrainedModel:
    """A randomly initialised BERT for `task` (see ARCHITECTURES) sized to the tokenizer."""
    torch.manual_seed(seed)
    names = labels or ["negative", "positive"]
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=hidden * 4,
        max_position_embeddings=tokenizer.model_max_length,
        pad_token_id=tokenizer.pad_token_id,
        id2label=dict(enumerate(names)),
        label2id={name: index for index, name in enumerate(names)},
    )
    return ARCHITECTURES[task](config).eval()


def bert_save(
    directory: Path,
    task: str,
    *,
    corpus: list[str] | None = None,
    labels: list[str] | None = None,
    hidden: int = 32,
    layers: int = 2,
    heads: int = 2,
    max_length: int = 64,
    seed: int = 0,
) -> Path:
    """Train a tokenizer, build a BERT for `task` and save both (safetensors) into `directory`."""
    tokenizer = tokenizer_train(corpus or DEFAULT_CORPUS, max_length=max_length)
    model = bert_build(task, tokenizer, labels=labels, hidden=hidden, layers=layers, heads=heads, seed=seed)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory


def directory_zip(directory: Path, archive: Path, *, root: str | None = None) -> Path:
    """Zip a model directory (its files under `root/`, the directory's name by default)."""
    prefix = directory.name if root is None else root
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as out:
        for path in sorted(directory.rglob("*")):
            if path.is_file():
                relative = path.relative_to(directory).as_posix()
                out.write(path, f"{prefix}/{relative}" if prefix else relative)
    return archive


def directory_tar_gz(directory: Path, archive: Path) -> Path:
    """A .tar.gz of a model directory, its files under the directory's name."""
    with tarfile.open(archive, "w:gz") as out:
        out.add(directory, arcname=directory.name)
    return archive


__all__ = ["ARCHITECTURES", "DEFAULT_CORPUS", "bert_build", "bert_save", "directory_tar_gz", "directory_zip",
           "tokenizer_train"]  # fmt: skip

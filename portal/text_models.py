"""Small Hugging Face text models built locally (no model hub is reachable from here).

A WordPiece tokenizer is trained with the `tokenizers` package on a few sentences and a
BERT of a few thousand to a few million parameters is built around it and saved with
`save_pretrained` (safetensors). The demo and the tests use these; they are not meant to
be good models, only real ones: the same files a user's fine-tuned BERT has.
"""

from __future__ import annotations

import string
import tarfile
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (
    BertConfig,
    BertForMaskedLM,
    BertForSequenceClassification,
    BertForTokenClassification,
    BertModel,
    GenerationConfig,
    GPT2Config,
    GPT2LMHeadModel,
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
    return _bert_tokenizer(tokenizer, max_length)


def tokenizer_from_words(corpus: list[str], max_length: int = 64) -> PreTrainedTokenizerFast:
    """A lower-casing BERT-style WordPiece tokenizer whose vocabulary is every word of `corpus`.

    Unlike `tokenizer_train` (whose trainer breaks ties between equally frequent merges in
    hash order, so two runs number the vocabulary differently), the same corpus always
    gives the same vocabulary: each word is one token, and single characters (with their
    ## continuations) spell any other word.
    """
    normalizer = normalizers.BertNormalizer(lowercase=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    words = {word for text in corpus for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text))}
    characters = sorted(set(string.ascii_lowercase + string.digits + string.punctuation) | set("".join(words)))
    pieces = characters + [f"##{character}" for character in characters]
    vocabulary = SPECIAL_TOKENS + pieces + sorted(words - set(characters))
    tokenizer = Tokenizer(models.WordPiece({token: i for i, token in enumerate(vocabulary)}, unk_token="[UNK]"))
    tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizer
    return _bert_tokenizer(tokenizer, max_length)


def _bert_tokenizer(tokenizer: Tokenizer, max_length: int) -> PreTrainedTokenizerFast:
    """[CLS] text [SEP] framing and BERT's special tokens around a WordPiece tokenizer."""
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
    return pretrained_save(directory, model, tokenizer)


def pretrained_save(directory: Path, model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast) -> Path:
    """Save a model (safetensors) and its tokenizer into `directory`, as a user's upload holds them."""
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory, safe_serialization=True)
    tokenizer.save_pretrained(directory)
    return directory


@contextmanager
def single_threaded() -> Iterator[None]:
    """Run torch on one thread inside the block (restored after).

    Tiny models gain little from a second thread, and on a shared machine OpenMP threads
    waiting for a busy core made training 20-40x slower (measured: 1 s vs 25-43 s per
    100 steps); one thread is steady.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def masked_lm_train(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    corpus: list[str],
    *,
    steps: int,
    batch_size: int = 32,
    mask_probability: float = 0.2,
    learning_rate: float = 5e-3,
    seed: int = 0,
) -> PreTrainedModel:
    """Train a masked-LM head on `corpus` for `steps` steps (random tokens masked per step).

    Small corpora are memorised rather than learned: that is the point for a demo whose
    answer ("capital") must be right, not for a language model.
    """
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    encoded = tokenizer(corpus, padding=True, return_tensors="pt", return_special_tokens_mask=True)
    ids, attention = encoded["input_ids"], encoded["attention_mask"]
    # Never mask [CLS], [SEP] or padding: the model is asked only about words.
    maskable = (encoded["special_tokens_mask"] == 0) & (attention == 1)
    optimiser = torch.optim.AdamW(model.parameters(), lr=learning_rate)
    model.train()
    with single_threaded():
        for _ in range(steps):
            rows = torch.randint(0, len(corpus), (batch_size,), generator=generator)
            inputs = ids[rows].clone()
            chosen = (torch.rand(inputs.shape, generator=generator) < mask_probability) & maskable[rows]
            labels = torch.where(chosen, inputs, torch.full_like(inputs, -100))
            inputs[chosen] = tokenizer.mask_token_id
            loss = model(input_ids=inputs, attention_mask=attention[rows], labels=labels).loss
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    return model.eval()


def classifier_train(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerFast,
    texts: list[str],
    labels: list[int],
    *,
    steps: int,
    batch_size: int = 32,
    learning_rate: float = 3e-3,
    unknown_probability: float = 0.0,
    seed: int = 0,
) -> PreTrainedModel:
    """Train a sequence-classification head on labelled texts (class indices) for `steps` steps.

    `unknown_probability`: each word of a training row is replaced by [UNK] with this
    probability (word dropout), so that texts full of words the tokenizer never saw are still
    classified by the words it knows. Without it, the held-out accuracy of the demo classifier
    ranged from 0.5 to 1.0 with the seed (measured); with 0.3 it was 1.0 for five seeds.
    """
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    encoded = tokenizer(texts, padding=True, return_tensors="pt", return_special_tokens_mask=True)
    words = (encoded["special_tokens_mask"] == 0) & (encoded["attention_mask"] == 1)
    targets = torch.tensor(labels, dtype=torch.long)
    optimiser = torch.optim.AdamW(model.parameters(), lr=learning_rate)
    model.train()
    with single_threaded():
        for _ in range(steps):
            rows = torch.randint(0, len(texts), (batch_size,), generator=generator)
            input_ids = encoded["input_ids"][rows].clone()
            dropped = (torch.rand(input_ids.shape, generator=generator) < unknown_probability) & words[rows]
            input_ids[dropped] = tokenizer.unk_token_id
            output = model(
                input_ids=input_ids,
                attention_mask=encoded["attention_mask"][rows],
                labels=targets[rows],
            )
            optimiser.zero_grad()
            output.loss.backward()
            optimiser.step()
    return model.eval()


GPT2_EOS = "<|endoftext|>"
# Sentences in several scripts: the trained merges join some multi-byte characters, others
# stay lone bytes, as in a real byte-level vocabulary (and random weights emit any byte).
GPT2_CORPUS = [
    *DEFAULT_CORPUS,
    "The model answers questions about the portal, its tokens and its quotas.",
    "Write a short poem about the sea and the wind.",
    "Café crème, naïve façade, jalapeño: 5 € or 4 £ each.",
    "Größe, Straße und Übermaß sind deutsche Wörter.",
    "日本語のテキストと中文文本 — 😀 🎉 emoji too.",
    "def add(a, b):\n    return a + b  # numbers 0 1 2 3 4 5 6 7 8 9",
]
# A plain chat format: each turn is its role in angle bars, its text and the end-of-text token.
GPT2_CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}" + GPT2_EOS + "\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
# (layers, hidden, heads, context, vocabulary): tiny has about 1 M parameters, small about 61 M.
GPT2_SIZES: dict[str, tuple[int, int, int, int, int]] = {
    "tiny": (4, 128, 4, 512, 1000),
    "small": (12, 640, 10, 1024, 2000),
}


def gpt2_tokenizer_train(corpus: list[str], vocab_size: int = 1000, max_length: int = 1024) -> PreTrainedTokenizerFast:
    """A GPT-2-style byte-level BPE tokenizer trained on `corpus`, with a chat template.

    The BPE trainer breaks ties between equally frequent pairs by the pairs themselves
    (checked: the same corpus gives the same tokenizer.json in every process), so unlike
    the WordPiece trainer it needs no hand-built vocabulary to be deterministic.
    """
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[GPT2_EOS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(corpus, trainer)
    wrapped = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=GPT2_EOS,
        eos_token=GPT2_EOS,
        pad_token=GPT2_EOS,
        unk_token=GPT2_EOS,
        model_max_length=max_length,
        clean_up_tokenization_spaces=False,
    )
    wrapped.chat_template = GPT2_CHAT_TEMPLATE
    return wrapped


def gpt2_build(tokenizer: PreTrainedTokenizerFast, *, size: str = "tiny", seed: int = 0) -> PreTrainedModel:
    """A randomly initialised GPT-2 language model of `size` (see GPT2_SIZES) sized to the tokenizer."""
    layers, hidden, heads, context, _ = GPT2_SIZES[size]
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=context,
        n_embd=hidden,
        n_layer=layers,
        n_head=heads,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    # The seed decides the weights without disturbing the caller's random state.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(config)
    return model.eval()


def gpt2_save(directory: Path, *, size: str = "tiny", seed: int = 0, corpus: list[str] | None = None) -> Path:
    """Train a byte-level BPE tokenizer, build a random GPT-2 of `size` and save both into `directory`.

    The directory is what `save_pretrained` writes for a causal LM: config.json,
    model.safetensors, generation_config.json and the tokenizer files (with its chat
    template). The same arguments give the same files.
    """
    if size not in GPT2_SIZES:
        raise ValueError(f"unknown GPT-2 size {size!r}; known: {', '.join(GPT2_SIZES)}")
    _, _, _, context, vocab_size = GPT2_SIZES[size]
    tokenizer = gpt2_tokenizer_train(corpus or GPT2_CORPUS, vocab_size=vocab_size, max_length=context)
    model = gpt2_build(tokenizer, size=size, seed=seed)
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    return pretrained_save(directory, model, tokenizer)


def directory_zip(directory: Path, archive: Path, *, root: str | None = None, compress: bool = True) -> Path:
    """Zip a model directory (its files under `root/`, the directory's name by default); stored
    rather than deflated when not `compress` (weights barely compress and deflate is slow)."""
    prefix = directory.name if root is None else root
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED) as out:
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


__all__ = ["ARCHITECTURES", "DEFAULT_CORPUS", "GPT2_CHAT_TEMPLATE", "GPT2_CORPUS", "GPT2_EOS", "GPT2_SIZES",
           "bert_build", "bert_save", "classifier_train", "directory_tar_gz", "directory_zip", "gpt2_build",
           "gpt2_save", "gpt2_tokenizer_train", "masked_lm_train", "pretrained_save", "single_threaded",
           "tokenizer_from_words", "tokenizer_train"]  # fmt: skip

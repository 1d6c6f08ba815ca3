"""Hugging Face text models: a `save_pretrained` directory (safetensors, a fast tokenizer), one task.

Texts are tokenised once without padding, then cut into forwards whose padding is as small
as INFERENCE_TEXT_PADDING allows ("bucket": sorted by length, each forward padded to its
own longest and cut where padding would outgrow its texts; "longest": arrival order;
"max_length": every row padded to the model's maximum, the baseline), bounded by
`max_rows` rows and INFERENCE_TEXT_MAX_BATCH_TOKENS padded tokens. Results are scattered
back to the texts' order.

A text-generation model (a causal LM, AutoModelForCausalLM) loads with the same checks but
is not run by `predict_texts`: the worker's generation loop (inference.generation.worker)
drives `module` and `tokenizer` through a continuous-batching engine.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from django.conf import settings

from inference.runtimes.base import ModelLoadError, TextInputError, TextRuntime, first_line
from inference.wire import bytes_array
from registry.text_tasks import DEFAULT_TOP_K, MAX_TOP_K, TOKENS_OUTPUT, TextTask, task_from_architectures

logger = logging.getLogger(__name__)

# transformers' auto class (by name) that loads each served task's model.
AUTO_CLASSES: dict[str, str] = {
    TextTask.FILL_MASK: "AutoModelForMaskedLM",
    TextTask.TEXT_CLASSIFICATION: "AutoModelForSequenceClassification",
    TextTask.TOKEN_CLASSIFICATION: "AutoModelForTokenClassification",
    TextTask.FEATURE_EXTRACTION: "AutoModel",
    TextTask.TEXT_GENERATION: "AutoModelForCausalLM",
}
PADDING_STRATEGIES = ("bucket", "longest", "max_length")
# sentence-transformers' Pooling config keys of the poolings served (one of them, alone).
POOLING_MODES = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls", "pooling_mode_max_tokens": "max"}
# "bucket" also starts a new forward once padding would make it this much larger than its
# texts, provided the forward already has this many rows: on a CPU a forward costs about
# its padded tokens, and a few more forwards of well-matched lengths cost less than one
# padded to the longest.
BUCKET_SLACK = 1.25
BUCKET_MIN_ROWS = 4
# A tokenizer is one of these files; without them transformers builds one with an empty vocabulary.
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model", "sentencepiece.bpe.model",
                   "tokenizer.model")  # fmt: skip
# The maximum sequence length when neither the tokenizer nor the config states one.
FALLBACK_MAX_LENGTH = 512
# Weights a task does not use: a missing pooler is no reason to refuse an embedding model.
UNUSED_PREFIXES = ("pooler.",)
# The prompt a generative model is warmed up and validated with.
GENERATION_EXAMPLE = "Once upon a time, the portal"


@functools.cache
def hf_libraries() -> tuple[Any, Any]:
    """transformers and tokenizers, imported on first use rather than with this module.

    Importing transformers takes seconds (on a busy 2-core machine about a third of a model
    host's start), and every worker, web process and model host imports this module, while
    only those that load a text model need the library.
    """
    import tokenizers
    import transformers

    # Workers log to files and consoles that people read: no progress bars, no load reports.
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    # transformers resolves its classes lazily: the auto classes (and their mappings) now too.
    for name in ("AutoConfig", "AutoTokenizer", *AUTO_CLASSES.values()):
        getattr(transformers, name)
    return transformers, tokenizers


@dataclass(frozen=True)
class Forward:
    """One forward pass of a plan: the texts' indices and the length every row is padded to."""

    indices: list[int]
    width: int


def forward_plan(lengths: list[int], padding: str, max_rows: int, max_tokens: int, max_length: int) -> list[Forward]:
    """Cut texts of token `lengths` into forwards of at most `max_rows` rows and `max_tokens` padded tokens.

    A single text longer than `max_tokens` still gets a forward of its own.
    """
    if padding not in PADDING_STRATEGIES:
        raise ValueError(f"unknown padding strategy {padding!r}; known: {', '.join(PADDING_STRATEGIES)}")
    bucket = padding == "bucket"
    order = sorted(range(len(lengths)), key=lengths.__getitem__) if bucket else range(len(lengths))
    plan: list[Forward] = []
    indices: list[int] = []
    width = real = 0
    for index in order:
        wider = max_length if padding == "max_length" else max(width, lengths[index])
        padded = (len(indices) + 1) * wider
        wasteful = bucket and len(indices) >= BUCKET_MIN_ROWS and padded > BUCKET_SLACK * (real + lengths[index])
        if indices and (len(indices) >= max_rows or padded > max_tokens or wasteful):
            plan.append(Forward(indices, width))
            indices = []
            real = 0
            wider = max_length if padding == "max_length" else lengths[index]
        indices.append(index)
        real += lengths[index]
        width = wider
    if indices:
        plan.append(Forward(indices, width))
    return plan


def token_rows_trim(outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Token-classification outputs without the padding columns no row of them uses (start == -1)."""
    start = outputs.get("start")
    if start is None or start.ndim != 2:
        return outputs
    used = int((start >= 0).sum(axis=1).max(initial=0))
    if used == start.shape[1]:
        return outputs
    return {name: array[:, :used] if array.ndim == 2 else array for name, array in outputs.items()}


def _bytes_array(items: list[str], shape: tuple[int, ...]) -> np.ndarray:
    return bytes_array([item.encode() for item in items], shape)


def _flag(parameters: Mapping[str, Any], name: str, default: bool) -> bool:
    value = parameters.get(name, default)
    if not isinstance(value, bool):
        raise TextInputError(f"parameter {name!r} must be true or false, not {value!r}")
    return value


def _top_k(parameters: Mapping[str, Any], default: int, limit: int) -> int:
    value = parameters.get("top_k", default)
    if isinstance(value, bool) or not isinstance(value, int):
        raise TextInputError(f"parameter 'top_k' must be an integer, not {value!r}")
    if not 1 <= value <= limit:
        raise TextInputError(f"parameter 'top_k' is {value}; it must be between 1 and {limit}")
    return value


def _read_json(path: Path) -> Any:
    """A JSON file's content (None when it is missing or not JSON: the loaders report those)."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _pooling_mode(path: Path) -> str:
    """Pooling of a sentence-transformers directory (its Pooling module's config), else mean."""
    modules = _read_json(path / "modules.json")
    modules = [m for m in modules if isinstance(m, dict)] if isinstance(modules, list) else []
    folder = next((str(m.get("path", "")) for m in modules if str(m.get("type", "")).endswith(".Pooling")), None)
    if folder is None:
        return "mean"
    config = _read_json(path / folder / "config.json")
    config = config if isinstance(config, dict) else {}
    modes = [key for key, value in config.items() if key.startswith("pooling_mode_") and value is True]
    if len(modes) != 1 or modes[0] not in POOLING_MODES:
        raise ModelLoadError(
            f"the sentence-transformers pooling in {folder}/config.json is not one of "
            f"{', '.join(POOLING_MODES.values())} (found {', '.join(modes) or 'none'})"
        )
    return POOLING_MODES[modes[0]]


def _model_root(path: Path) -> Path:
    """The directory holding config.json: `path` itself or its only subdirectory (an archive's folder)."""
    if (path / "config.json").is_file():
        return path
    folders = [child for child in path.iterdir() if child.is_dir()] if path.is_dir() else []
    if len(folders) == 1 and (folders[0] / "config.json").is_file():
        return folders[0]
    raise ModelLoadError(f"no config.json in the model directory {path.name}: not a save_pretrained directory")


class HuggingFaceRuntime(TextRuntime):
    """A transformers model and its fast tokenizer, serving one text task."""

    format = "huggingface"
    unpacked = True

    def __init__(
        self, module: Any, device: torch.device, *, task: str, tokenizer: Any, max_length: int, pooling: str
    ) -> None:
        super().__init__(module, device)
        self.task = task
        self.tokenizer = tokenizer
        self.config = module.config
        self.max_length = max_length
        self.pooling = pooling
        self.labels = [str(self.config.id2label[i]) for i in range(len(self.config.id2label or {}))]

    @property
    def generative(self) -> bool:
        """Whether the model generates text (served by an engine, not by `predict_texts`)."""
        return self.task == TextTask.TEXT_GENERATION

    @property
    def context_length(self) -> int:
        """Positions the model attends over (prompt + completion); 0 when its config states none."""
        for name in ("max_position_embeddings", "n_positions", "n_ctx"):
            value = getattr(self.config, name, None)
            if isinstance(value, int) and value > 0:
                return value
        return 0

    @property
    def chat_template(self) -> bool:
        """Whether the tokenizer carries a chat template (what /v1/chat/completions needs)."""
        return bool(getattr(self.tokenizer, "chat_template", None))

    @classmethod
    def load(cls, path: Path, device: torch.device, *, task: str = "") -> HuggingFaceRuntime:
        root = _model_root(path)
        transformers, _ = hf_libraries()
        try:
            config = transformers.AutoConfig.from_pretrained(root, local_files_only=True, trust_remote_code=False)
        except Exception as exc:
            raise ModelLoadError(f"config.json could not be loaded: {first_line(exc)}") from exc
        task = task or task_from_architectures(getattr(config, "architectures", None)) or ""
        if task not in AUTO_CLASSES:
            raise ModelLoadError(f"task {task!r} is not served; known: {', '.join(AUTO_CLASSES)}")
        half = device.type == "cuda" and settings.INFERENCE_TEXT_HALF_PRECISION
        try:
            module, info = getattr(transformers, AUTO_CLASSES[task]).from_pretrained(
                root, config=config, local_files_only=True, trust_remote_code=False, use_safetensors=True,
                dtype=torch.float16 if half else torch.float32, output_loading_info=True,
            )  # fmt: skip
        except Exception as exc:
            raise ModelLoadError(f"the {task} model could not be loaded: {first_line(exc)}") from exc
        missing = sorted(key for key in info["missing_keys"] if not key.startswith(UNUSED_PREFIXES))
        if missing:
            # transformers would initialise them at random: a classifier head that answers noise.
            raise ModelLoadError(
                f"the weights lack {len(missing)} tensor(s) the {task} model needs (e.g. {missing[0]}); "
                "save the model for this task with save_pretrained"
            )
        if not any((root / name).is_file() for name in TOKENIZER_FILES):
            raise ModelLoadError(f"the directory has no tokenizer (one of {', '.join(TOKENIZER_FILES)})")
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(root, local_files_only=True, trust_remote_code=False)
        except Exception as exc:
            raise ModelLoadError(f"the tokenizer could not be loaded: {first_line(exc)}") from exc
        if not getattr(tokenizer, "is_fast", False):
            raise ModelLoadError("the tokenizer is not a fast (Rust) tokenizer; include tokenizer.json")
        if task == TextTask.FILL_MASK and tokenizer.mask_token_id is None:
            raise ModelLoadError("the tokenizer has no mask token, which a fill-mask model needs")
        limits = [tokenizer.model_max_length, getattr(config, "max_position_embeddings", None)]
        sentence_config = _read_json(root / "sentence_bert_config.json")
        limits.append(sentence_config.get("max_seq_length") if isinstance(sentence_config, dict) else None)
        max_length = min(
            (int(limit) for limit in limits if isinstance(limit, int | float) and 0 < limit < 1e9),
            default=FALLBACK_MAX_LENGTH,
        )
        pooling = _pooling_mode(root) if task == TextTask.FEATURE_EXTRACTION else ""
        return cls(module.to(device).eval(), device, task=task, tokenizer=tokenizer, max_length=max_length,
                   pooling=pooling)  # fmt: skip

    def parameter_count(self) -> int:
        return sum(p.numel() for p in self.module.parameters())

    def example_text(self) -> str:
        if self.generative:
            return GENERATION_EXAMPLE
        if self.task == TextTask.FILL_MASK:
            return f"Paris is the {self.tokenizer.mask_token} of France."
        return "Paris is the capital of France."

    def describe(self) -> dict[str, Any]:
        transformers, tokenizers = hf_libraries()
        return {
            "task": self.task,
            "vocab_size": len(self.tokenizer),
            "max_sequence_length": self.max_length,
            "dtype": str(next(self.module.parameters()).dtype).removeprefix("torch."),
            "memory_bytes": self.memory_bytes(),
            "transformers_version": transformers.__version__,
            "tokenizers_version": tokenizers.__version__,
            **({"pooling": self.pooling} if self.pooling else {}),
            **({"mask_token": self.tokenizer.mask_token} if self.task == TextTask.FILL_MASK else {}),
            **({"context_length": self.context_length, "chat_template": self.chat_template} if self.generative else {}),
        }

    def predict_texts(
        self,
        texts: list[str],
        parameters: Mapping[str, Any],
        *,
        max_rows: int,
        padding: str | None = None,
        max_tokens: int | None = None,
    ) -> dict[str, np.ndarray]:
        if self.generative:
            raise TextInputError(
                "this is a text-generation model: send prompts to /v1/completions (or messages to "
                "/v1/chat/completions), not to /v2 infer"
            )
        if not texts:
            raise TextInputError("no texts were given")
        empty = next((index for index, text in enumerate(texts) if not text), None)
        if empty is not None:
            raise TextInputError(f"text {empty} is empty")
        truncate = _flag(parameters, "truncate", True)
        encoded = self.tokenizer(
            texts,
            truncation=truncate,
            max_length=self.max_length if truncate else None,
            return_special_tokens_mask=self.task == TextTask.TOKEN_CLASSIFICATION,
            return_offsets_mapping=self.task == TextTask.TOKEN_CLASSIFICATION,
        )
        lengths = [len(ids) for ids in encoded["input_ids"]]
        if not truncate:
            over = next((index for index, length in enumerate(lengths) if length > self.max_length), None)
            if over is not None:
                raise TextInputError(
                    f"text {over} is {lengths[over]} tokens long; the model reads at most {self.max_length} "
                    "(send truncate: true to cut it)"
                )
        plan = forward_plan(
            lengths,
            padding or settings.INFERENCE_TEXT_PADDING,
            max_rows,
            max_tokens or settings.INFERENCE_TEXT_MAX_BATCH_TOKENS,
            self.max_length,
        )
        task_outputs = {
            TextTask.FILL_MASK: self._fill_mask,
            TextTask.TEXT_CLASSIFICATION: self._classify,
            TextTask.TOKEN_CLASSIFICATION: self._tag_tokens,
            TextTask.FEATURE_EXTRACTION: self._embed,
        }[TextTask(self.task)]
        outputs = task_outputs(encoded, plan, parameters)
        outputs[TOKENS_OUTPUT] = np.asarray(lengths, dtype=np.int64)
        return outputs

    def _forward(self, encoded: Any, forward: Forward) -> Any:
        batch = self._padded(encoded, forward)
        with torch.inference_mode():
            return self.module(**{name: tensor.to(self.device) for name, tensor in batch.items()}), batch

    def _padded(self, encoded: Any, forward: Forward) -> dict[str, torch.Tensor]:
        """The forward's rows padded to its width, filled in numpy (tokenizer.pad costs ~0.3 ms a call)."""
        fill = {"input_ids": self.tokenizer.pad_token_id or 0, "token_type_ids": self.tokenizer.pad_token_type_id}
        left = self.tokenizer.padding_side == "left"
        batch = {}
        for name in self.tokenizer.model_input_names:
            if name not in encoded:
                continue
            array = np.full((len(forward.indices), forward.width), fill.get(name, 0), dtype=np.int64)
            for row, index in enumerate(forward.indices):
                values = encoded[name][index]
                if left:
                    array[row, forward.width - len(values) :] = values
                else:
                    array[row, : len(values)] = values
            batch[name] = torch.from_numpy(array)
        return batch

    def _fill_mask(self, encoded: Any, plan: list[Forward], parameters: Mapping[str, Any]) -> dict[str, np.ndarray]:
        top_k = _top_k(parameters, DEFAULT_TOP_K[TextTask.FILL_MASK], min(MAX_TOP_K, len(self.tokenizer)))
        mask_id = self.tokenizer.mask_token_id
        for index, ids in enumerate(encoded["input_ids"]):
            found = ids.count(mask_id)
            if found != 1:
                raise TextInputError(
                    f"text {index} has {found} mask tokens; put exactly one {self.tokenizer.mask_token} in each text"
                )
        rows = len(encoded["input_ids"])
        scores = np.zeros((rows, top_k), dtype=np.float32)
        tokens = np.zeros((rows, top_k), dtype=np.int64)
        for forward in plan:
            result, batch = self._forward(encoded, forward)
            where = (batch["input_ids"] == mask_id).nonzero()
            logits = result.logits[where[:, 0].to(self.device), where[:, 1].to(self.device)].float()
            best = logits.softmax(dim=-1).topk(top_k, dim=-1)
            scores[forward.indices] = best.values.cpu().numpy()
            tokens[forward.indices] = best.indices.cpu().numpy()
        words = self.tokenizer.batch_decode(tokens.reshape(-1, 1).tolist())
        return {"token_str": _bytes_array(words, tokens.shape), "score": scores, "token": tokens}

    def _classify(self, encoded: Any, plan: list[Forward], parameters: Mapping[str, Any]) -> dict[str, np.ndarray]:
        # top_k only shapes the friendly answer; /v2 always carries every class's score.
        _top_k(parameters, DEFAULT_TOP_K[TextTask.TEXT_CLASSIFICATION], MAX_TOP_K)
        multi_label = self.config.problem_type == "multi_label_classification"
        scores = np.zeros((len(encoded["input_ids"]), self.config.num_labels), dtype=np.float32)
        for forward in plan:
            logits = self._forward(encoded, forward)[0].logits.float()
            probabilities = logits.sigmoid() if multi_label else logits.softmax(dim=-1)
            scores[forward.indices] = probabilities.cpu().numpy()
        labels = [self.labels[i] if i < len(self.labels) else str(i) for i in scores.argmax(axis=1).tolist()]
        return {"scores": scores, "label": _bytes_array(labels, (len(labels),))}

    def _tag_tokens(self, encoded: Any, plan: list[Forward], parameters: Mapping[str, Any]) -> dict[str, np.ndarray]:
        rows: list[list[tuple[str, float, str, int, int]]] = [[] for _ in encoded["input_ids"]]
        for forward in plan:
            probabilities = self._forward(encoded, forward)[0].logits.float().softmax(dim=-1)
            best = probabilities.max(dim=-1)
            scores, classes = best.values.cpu().numpy(), best.indices.cpu().numpy()
            for row, index in enumerate(forward.indices):
                ids = encoded["input_ids"][index]
                words = self.tokenizer.convert_ids_to_tokens(ids)
                special = encoded["special_tokens_mask"][index]
                offsets = encoded["offset_mapping"][index]
                for position in range(len(ids)):
                    if special[position]:
                        continue
                    label = int(classes[row, position])
                    entity = self.labels[label] if label < len(self.labels) else str(label)
                    start, end = offsets[position]
                    rows[index].append((entity, float(scores[row, position]), words[position], start, end))
        width = max(len(row) for row in rows)
        padded = [row + [("", 0.0, "", -1, -1)] * (width - len(row)) for row in rows]
        shape = (len(rows), width)
        columns = list(zip(*[item for row in padded for item in row], strict=True)) or [(), (), (), (), ()]
        return {
            "entity": _bytes_array(list(columns[0]), shape),
            "score": np.asarray(columns[1], dtype=np.float32).reshape(shape),
            "word": _bytes_array(list(columns[2]), shape),
            "start": np.asarray(columns[3], dtype=np.int64).reshape(shape),
            "end": np.asarray(columns[4], dtype=np.int64).reshape(shape),
        }

    def _embed(self, encoded: Any, plan: list[Forward], parameters: Mapping[str, Any]) -> dict[str, np.ndarray]:
        normalize = _flag(parameters, "normalize", True)
        embeddings: np.ndarray | None = None
        for forward in plan:
            result, batch = self._forward(encoded, forward)
            hidden = result.last_hidden_state.float()
            mask = batch["attention_mask"].to(self.device).unsqueeze(-1).float()
            if self.pooling == "cls":
                pooled = hidden[:, 0]
            elif self.pooling == "max":
                pooled = hidden.masked_fill(mask == 0, float("-inf")).max(dim=1).values
            else:
                pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
            if normalize:
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
            if embeddings is None:
                embeddings = np.zeros((len(encoded["input_ids"]), pooled.shape[1]), dtype=np.float32)
            embeddings[forward.indices] = pooled.cpu().numpy()
        assert embeddings is not None  # a plan has at least one forward
        return {"embedding": embeddings}


__all__ = [
    "AUTO_CLASSES",
    "PADDING_STRATEGIES",
    "Forward",
    "HuggingFaceRuntime",
    "forward_plan",
    "hf_libraries",
    "token_rows_trim",
]

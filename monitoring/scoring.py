"""Evaluation metrics as pure functions of model outputs and labels (numpy only)."""

from __future__ import annotations

from typing import Any

import numpy as np

TOP_K = 5


def _probabilities(outputs: np.ndarray) -> np.ndarray:
    """Rows as probabilities: kept when they already are, else a softmax of the logits."""
    scores = outputs.astype(np.float64)
    if scores.min() >= 0 and np.allclose(scores.sum(axis=1), 1.0, atol=1e-4):
        return scores
    shifted = scores - scores.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def top_k_for(num_classes: int) -> int:
    """The k of top-k accuracy: 5, or fewer for models with few classes (never all of them)."""
    return max(1, min(TOP_K, num_classes - 1))


def classification_scores(outputs: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    """Accuracy, top-k accuracy, macro F1, log loss and the confusion matrix (rows: true class)."""
    outputs = outputs.reshape(len(outputs), -1)
    labels = labels.astype(np.int64).reshape(-1)
    classes = outputs.shape[1]
    predicted = outputs.argmax(axis=1)
    k = top_k_for(classes)
    top = np.argsort(-outputs, axis=1, kind="stable")[:, :k]
    confusion = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(confusion, (labels, predicted), 1)
    f1s = []
    # Macro F1 over the classes that occur as a label or a prediction (as scikit-learn does).
    for c in range(classes):
        tp = confusion[c, c]
        fp = confusion[:, c].sum() - tp
        fn = confusion[c, :].sum() - tp
        if tp + fp + fn == 0:
            continue
        f1s.append(2 * tp / (2 * tp + fp + fn))
    probabilities = np.clip(_probabilities(outputs)[np.arange(len(labels)), labels], 1e-15, 1.0)
    return {
        "accuracy": float((predicted == labels).mean()),
        "top_k": k,
        "top_k_accuracy": float((top == labels[:, None]).any(axis=1).mean()),
        "macro_f1": float(np.mean(f1s)) if f1s else 0.0,
        "log_loss": float(-np.log(probabilities).mean()),
        "confusion_matrix": confusion.tolist(),
    }


def regression_scores(predictions: np.ndarray, targets: np.ndarray) -> dict[str, Any]:
    """MAE, RMSE and R² (1 - residual / total sum of squares; 0 when the targets are constant)."""
    predicted = predictions.astype(np.float64).reshape(len(predictions), -1)
    expected = targets.astype(np.float64).reshape(len(targets), -1)
    if predicted.shape != expected.shape:
        raise ValueError(f"the model's first output has shape {list(predictions.shape)}, "
                         f"the targets {list(targets.shape)}")  # fmt: skip
    errors = predicted - expected
    total = ((expected - expected.mean(axis=0)) ** 2).sum()
    return {
        "mae": float(np.abs(errors).mean()),
        "rmse": float(np.sqrt((errors**2).mean())),
        "r2": float(1 - (errors**2).sum() / total) if total > 0 else 0.0,
    }


def latency_scores(batch_ms: list[float], batch_rows: list[int]) -> dict[str, Any]:
    """Per-batch latency (mean, p50, p95, p99, max) and throughput in rows per second."""
    times = np.asarray(batch_ms, dtype=np.float64)
    rows = int(sum(batch_rows))
    seconds = times.sum() / 1000
    return {
        "batches": len(batch_ms),
        "batch_ms": [round(float(t), 4) for t in times],
        "latency_ms": {
            "mean": round(float(times.mean()), 4),
            "p50": round(float(np.percentile(times, 50)), 4),
            "p95": round(float(np.percentile(times, 95)), 4),
            "p99": round(float(np.percentile(times, 99)), 4),
            "max": round(float(times.max()), 4),
        },
        "throughput_rows_per_s": round(rows / seconds, 2) if seconds > 0 else None,
    }

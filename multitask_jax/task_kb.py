"""Task knowledge base (paper section III-A): maps a free-text task requirement r to a predefined task.

The memory module holds the predefined task instructions t_i (several phrasings per task); the computing
module embeds r with Sentence-BERT (all-MiniLM-L6-v2, `multitask_jax.sentence_encoder`) and scores

    Sim(r, t_i) = v(r) . v(t_i) / (||v(r)|| ||v(t_i)||)          (eq. (4), cosine similarity)

A task's score is the best score over its phrasings; the task with the highest score is selected, and a
requirement whose best score is under `threshold` is rejected. The same KB (same weights, same list) sits
at the transmitter and the receiver, so both sides map a requirement to the same task.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Mapping, Sequence

import numpy as np

from multitask_jax.sentence_encoder import SentenceEncoder

RECONSTRUCTION = "reconstruction"
SEGMENTATION = "segmentation"

DEFAULT_INSTRUCTIONS: Mapping[str, tuple[str, ...]] = {
    RECONSTRUCTION: (
        "image reconstruction",
        "reconstruct the image",
        "recover the original image at the receiver",
        "transmit the picture so it can be viewed in high quality",
        "restore the photo",
    ),
    SEGMENTATION: (
        "image segmentation",
        "segment the image",
        "semantic segmentation of the objects in the image",
        "assign an object class label to every pixel of the picture",
        "outline the objects in the photo",
    ),
}
DEFAULT_THRESHOLD = 0.3


@dataclasses.dataclass(frozen=True)
class TaskKBConfig:
    """Task KB settings.

    instructions: task name -> descriptive phrasings (the memory module).
    threshold: a requirement whose best cosine score is below this is rejected.
    model_path: all-MiniLM-L6-v2 folder; None searches the installed package, then the HF cache.
    """

    instructions: Mapping[str, tuple[str, ...]] = dataclasses.field(
        default_factory=lambda: dict(DEFAULT_INSTRUCTIONS)
    )
    threshold: float = DEFAULT_THRESHOLD
    model_path: str | os.PathLike | None = None

    def __post_init__(self):
        if not self.instructions:
            raise ValueError("instructions must name at least one task")
        for task, phrases in self.instructions.items():
            if not isinstance(task, str) or not task:
                raise ValueError(f"task names must be non-empty str, got {task!r}")
            if isinstance(phrases, str) or not phrases:
                raise ValueError(f"task {task!r} needs a non-empty tuple of phrasings, got {phrases!r}")
            if not all(isinstance(p, str) and p.strip() for p in phrases):
                raise ValueError(f"task {task!r} has an empty or non-str phrasing: {phrases!r}")
        if not -1.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold is a cosine similarity in [-1, 1], got {self.threshold}")


@dataclasses.dataclass(frozen=True)
class TaskSelection:
    """Result of `TaskKB.select_task`: the chosen task, its score, and the runner-up (None if one task)."""

    task: str
    score: float
    runner_up: str | None
    runner_up_score: float | None


def _check_request(text) -> str:
    if not isinstance(text, str):
        raise TypeError(f"a task requirement must be a str, got {type(text).__name__}")
    if not text.strip():
        raise ValueError("the task requirement is empty; describe the task, e.g. 'segment the image'")
    return text


class TaskKB:
    """The task KB: instruction embeddings computed once at construction, then cosine scoring.

    `scores(text)` -> {task: score}; `select_task(text)` -> `TaskSelection` or ValueError under threshold.
    """

    def __init__(self, config: TaskKBConfig | None = None, encoder: SentenceEncoder | None = None):
        self.config = config or TaskKBConfig()
        self.encoder = encoder or SentenceEncoder(self.config.model_path)
        self.tasks: tuple[str, ...] = tuple(self.config.instructions)
        phrases = [(t, p) for t in self.tasks for p in self.config.instructions[t]]
        self._phrase_task = np.array([self.tasks.index(t) for t, _ in phrases])
        self.instruction_embeddings = self.encoder.encode([p for _, p in phrases])  # (P, D), unit norm

    def score_matrix(self, texts: Sequence[str]) -> np.ndarray:
        """Per-task score max_i Sim(r, t_i) for each requirement. `N` texts -> `(N, n_tasks)`."""
        texts = [_check_request(t) for t in texts]
        sims = self.encoder.encode(texts) @ self.instruction_embeddings.T  # (N, P), rows are unit vectors
        out = np.full((len(texts), len(self.tasks)), -np.inf, np.float32)
        for j in range(len(self.tasks)):
            out[:, j] = sims[:, self._phrase_task == j].max(axis=1)
        return out

    def scores(self, text: str) -> dict[str, float]:
        """{task: best cosine score over its phrasings} for one requirement."""
        return dict(zip(self.tasks, map(float, self.score_matrix([text])[0]), strict=True))

    def _selection(self, text: str, row: np.ndarray) -> TaskSelection:
        order = np.argsort(-row, kind="stable")
        best = int(order[0])
        if row[best] < self.config.threshold:
            scored = ", ".join(f"{t}={row[i]:.3f}" for i, t in enumerate(self.tasks))
            raise ValueError(
                f"task requirement {text!r} matches no known task (scores {scored}; threshold "
                f"{self.config.threshold}). Known tasks: {', '.join(self.tasks)}."
            )
        second = int(order[1]) if len(order) > 1 else None
        return TaskSelection(
            task=self.tasks[best],
            score=float(row[best]),
            runner_up=None if second is None else self.tasks[second],
            runner_up_score=None if second is None else float(row[second]),
        )

    def select_task(self, text: str) -> TaskSelection:
        """Maps a requirement to the task with the highest score; ValueError if it is under the threshold."""
        return self._selection(text, self.score_matrix([text])[0])

    def select_tasks(self, texts: Sequence[str]) -> list[TaskSelection]:
        """`select_task` for many requirements in one batched encoder call."""
        texts = list(texts)
        return [self._selection(t, row) for t, row in zip(texts, self.score_matrix(texts), strict=True)]


@functools.cache
def default_task_kb() -> TaskKB:
    """The process-wide TaskKB with the default instructions (built on first use)."""
    return TaskKB()


def select_task(text: str) -> TaskSelection:
    """`TaskKB.select_task` on the default KB."""
    return default_task_kb().select_task(text)

"""Task knowledge base (paper section III-A): maps a free-text task requirement r to a predefined task.

The memory module (`multitask_jax.task_memory`) holds several phrasings t_i of each predefined task and of
image requests the system does not serve. The computing module embeds r with Sentence-BERT
(all-MiniLM-L6-v2, `multitask_jax.sentence_encoder`) and scores each phrasing by eq. (4):

    Sim(r, t_i) = v(r) . v(t_i) / (||v(r)|| ||v(t_i)||)                       (cosine similarity)

A task's score is the mean of its `top_k` highest similarities, so several phrasings have to agree and a
single shared word ("pixel") cannot decide alone. The answer (`TaskSelection.status`) is
  - 'out_of_scope' when the best task score is under `threshold`, or the unsupported requests beat it by
    at least `margin`;
  - 'ambiguous' when the two best tasks are within `margin` of each other (the answer names both);
  - 'selected' otherwise, with the highest-scoring task.
The same KB (same weights, same memory) sits at the transmitter and the receiver, so both sides map a
requirement to the same task.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Mapping, Sequence

import numpy as np

from multitask_jax.sentence_encoder import SentenceEncoder
from multitask_jax.task_memory import TASK_INSTRUCTIONS, UNSUPPORTED_INSTRUCTIONS
from multitask_jax.tasks import RECONSTRUCTION, SEGMENTATION

__all__ = ["RECONSTRUCTION", "SEGMENTATION", "SELECTED", "AMBIGUOUS", "OUT_OF_SCOPE"]

SELECTED, AMBIGUOUS, OUT_OF_SCOPE = "selected", "ambiguous", "out_of_scope"
DEFAULT_INSTRUCTIONS: Mapping[str, tuple[str, ...]] = TASK_INSTRUCTIONS
DEFAULT_TOP_K = 3
DEFAULT_THRESHOLD = 0.35
DEFAULT_MARGIN = 0.04


@dataclasses.dataclass(frozen=True)
class TaskKBConfig:
    """Task KB settings.

    instructions: task name -> descriptive phrasings (the memory module).
    unsupported: phrasings of requests the system does not serve; () turns this check off.
    top_k: a task's score is the mean of its top_k cosine similarities (1 = the single nearest phrasing).
    threshold: a requirement whose best task score is below this is out of scope.
    margin: the two best tasks closer than this make the requirement ambiguous (0 turns this off); the
        unsupported requests must beat the best task by this much to make it out of scope.
    model_path: all-MiniLM-L6-v2 folder; None searches the installed package, then the HF cache.
    """

    instructions: Mapping[str, tuple[str, ...]] = dataclasses.field(
        default_factory=lambda: dict(DEFAULT_INSTRUCTIONS)
    )
    unsupported: tuple[str, ...] = UNSUPPORTED_INSTRUCTIONS
    top_k: int = DEFAULT_TOP_K
    threshold: float = DEFAULT_THRESHOLD
    margin: float = DEFAULT_MARGIN
    model_path: str | os.PathLike | None = None

    def __post_init__(self):
        if not self.instructions:
            raise ValueError("instructions must name at least one task")
        for task, phrases in self.instructions.items():
            if not isinstance(task, str) or not task or task in (AMBIGUOUS, OUT_OF_SCOPE):
                raise ValueError(f"task names must be non-empty str other than the answers, got {task!r}")
            if isinstance(phrases, str) or not phrases:
                raise ValueError(f"task {task!r} needs a non-empty tuple of phrasings, got {phrases!r}")
            if not all(isinstance(p, str) and p.strip() for p in phrases):
                raise ValueError(f"task {task!r} has an empty or non-str phrasing: {phrases!r}")
        if isinstance(self.unsupported, str) or not all(isinstance(p, str) and p.strip() for p in self.unsupported):
            raise ValueError(f"unsupported must be a tuple of non-empty str, got {self.unsupported!r}")
        if not (isinstance(self.top_k, int) and self.top_k >= 1):
            raise ValueError(f"top_k must be an int >= 1, got {self.top_k!r}")
        if not -1.0 <= self.threshold <= 1.0:
            raise ValueError(f"threshold is a cosine similarity in [-1, 1], got {self.threshold}")
        if not 0.0 <= self.margin <= 2.0:
            raise ValueError(f"margin is a difference of cosine similarities in [0, 2], got {self.margin}")


@dataclasses.dataclass(frozen=True)
class TaskSelection:
    """The task KB's answer for one requirement.

    status: SELECTED, AMBIGUOUS or OUT_OF_SCOPE. task/score: the best-scoring task and its score (the
    chosen task only when status is SELECTED); runner_up/runner_up_score: the second task (None with one
    task); unsupported_score: the unsupported requests' score (None when that check is off).
    """

    task: str
    score: float
    runner_up: str | None
    runner_up_score: float | None
    status: str = SELECTED
    unsupported_score: float | None = None
    request: str = ""
    threshold: float = DEFAULT_THRESHOLD
    margin: float = DEFAULT_MARGIN
    known_tasks: tuple[str, ...] = ()

    @property
    def label(self) -> str:
        """The chosen task, or 'ambiguous' / 'out_of_scope'."""
        return self.task if self.status == SELECTED else self.status

    @property
    def candidates(self) -> tuple[str, ...]:
        """The tasks the answer names: the chosen one, both for AMBIGUOUS, none for OUT_OF_SCOPE."""
        if self.status == AMBIGUOUS:
            return (self.task, self.runner_up)
        return (self.task,) if self.status == SELECTED else ()

    def message(self) -> str:
        """The answer as one line of text."""
        r = repr(self.request)
        if self.status == SELECTED:
            runner = "" if self.runner_up is None else f"; runner-up {self.runner_up} {self.runner_up_score:.3f}"
            return f"{r} -> {self.task} (score {self.score:.3f}{runner})"
        if self.status == AMBIGUOUS:
            return (
                f"task requirement {r} is ambiguous between {self.task} ({self.score:.3f}) and "
                f"{self.runner_up} ({self.runner_up_score:.3f}), closer than the margin {self.margin}; "
                f"ask for one of them, e.g. '{self.task}' or '{self.runner_up}'."
            )
        scores = f"{self.task}={self.score:.3f}"
        if self.runner_up is not None:
            scores += f", {self.runner_up}={self.runner_up_score:.3f}"
        if self.unsupported_score is not None:
            scores += f", unsupported requests={self.unsupported_score:.3f}"
        return (
            f"task requirement {r} matches no known task (scores {scores}; threshold {self.threshold}). "
            f"Known tasks: {', '.join(self.known_tasks)}."
        )


class TaskKBError(ValueError):
    """`select_task` found no single task; `.selection` holds the full answer."""

    def __init__(self, selection: TaskSelection):
        super().__init__(selection.message())
        self.selection = selection


class OutOfScopeError(TaskKBError):
    """The requirement matches none of the tasks."""


class AmbiguousTaskError(TaskKBError):
    """The requirement fits two tasks about equally; the message names both."""


def _check_request(text) -> str:
    if not isinstance(text, str):
        raise TypeError(f"a task requirement must be a str, got {type(text).__name__}")
    if not text.strip():
        raise ValueError("the task requirement is empty; describe the task, e.g. 'segment the image'")
    return text


def top_k_mean(sims: np.ndarray, k: int) -> np.ndarray:
    """Mean of the k largest values along the last axis (all of them if there are fewer). `(N, P)` -> `(N,)`."""
    k = min(k, sims.shape[-1])
    return np.sort(sims, axis=-1)[..., -k:].mean(axis=-1)


class TaskKB:
    """The task KB: memory embeddings computed once at construction, then cosine scoring.

    `scores(text)` -> {task: score}; `classify(text)` -> `TaskSelection` of any status;
    `select_task(text)` -> `TaskSelection` of a chosen task, else `OutOfScopeError` / `AmbiguousTaskError`.
    """

    def __init__(self, config: TaskKBConfig | None = None, encoder: SentenceEncoder | None = None):
        self.config = config or TaskKBConfig()
        self.encoder = encoder or SentenceEncoder(self.config.model_path)
        self.tasks: tuple[str, ...] = tuple(self.config.instructions)
        phrases = [(t, p) for t in self.tasks for p in self.config.instructions[t]]
        self._phrase_task = np.array([self.tasks.index(t) for t, _ in phrases])
        embeddings = self.encoder.encode([p for _, p in phrases] + list(self.config.unsupported))
        self.instruction_embeddings = embeddings[: len(phrases)]  # (P, D), unit norm
        self.unsupported_embeddings = embeddings[len(phrases) :]  # (U, D)

    def _score(self, texts: Sequence[str]) -> tuple[np.ndarray, np.ndarray | None]:
        texts = [_check_request(t) for t in texts]
        v = self.encoder.encode(texts)  # (N, D), rows are unit vectors
        sims = v @ self.instruction_embeddings.T  # (N, P)
        k = self.config.top_k
        tasks = np.stack([top_k_mean(sims[:, self._phrase_task == j], k) for j in range(len(self.tasks))], 1)
        if not len(self.unsupported_embeddings):
            return tasks.astype(np.float32), None
        return tasks.astype(np.float32), top_k_mean(v @ self.unsupported_embeddings.T, k).astype(np.float32)

    def score_matrix(self, texts: Sequence[str]) -> np.ndarray:
        """Per-task score (mean of the top_k Sim(r, t_i)) for each requirement. `N` texts -> `(N, n_tasks)`."""
        return self._score(texts)[0]

    def scores(self, text: str) -> dict[str, float]:
        """{task: mean of its top_k cosine scores} for one requirement."""
        return dict(zip(self.tasks, map(float, self.score_matrix([text])[0]), strict=True))

    def _answer(self, text: str, row: np.ndarray, unsupported: float | None) -> TaskSelection:
        c = self.config
        order = np.argsort(-row, kind="stable")
        best = int(order[0])
        second = int(order[1]) if len(order) > 1 else None
        if row[best] < c.threshold or (unsupported is not None and unsupported - row[best] >= c.margin):
            status = OUT_OF_SCOPE
        elif second is not None and row[best] - row[second] < c.margin:
            status = AMBIGUOUS
        else:
            status = SELECTED
        return TaskSelection(
            task=self.tasks[best],
            score=float(row[best]),
            runner_up=None if second is None else self.tasks[second],
            runner_up_score=None if second is None else float(row[second]),
            status=status,
            unsupported_score=None if unsupported is None else float(unsupported),
            request=text,
            threshold=c.threshold,
            margin=c.margin,
            known_tasks=self.tasks,
        )

    def classify_many(self, texts: Sequence[str]) -> list[TaskSelection]:
        """`classify` for many requirements in one batched encoder call."""
        texts = list(texts)
        tasks, unsupported = self._score(texts)
        extra = [None] * len(texts) if unsupported is None else [float(u) for u in unsupported]
        return [self._answer(t, row, u) for t, row, u in zip(texts, tasks, extra, strict=True)]

    def classify(self, text: str) -> TaskSelection:
        """The answer for one requirement: a chosen task, an ambiguous pair, or out of scope."""
        return self.classify_many([text])[0]

    def select_task(self, text: str) -> TaskSelection:
        """The chosen task; `OutOfScopeError` or `AmbiguousTaskError` (both ValueError) otherwise."""
        return _raise_unless_selected(self.classify(text))

    def select_tasks(self, texts: Sequence[str]) -> list[TaskSelection]:
        """`select_task` for many requirements in one batched encoder call."""
        return [_raise_unless_selected(s) for s in self.classify_many(texts)]


def _raise_unless_selected(selection: TaskSelection) -> TaskSelection:
    if selection.status == OUT_OF_SCOPE:
        raise OutOfScopeError(selection)
    if selection.status == AMBIGUOUS:
        raise AmbiguousTaskError(selection)
    return selection


def evaluate_requests(kb: TaskKB, requests: Sequence[tuple[str, str]]) -> dict:
    """Accuracy of `kb.classify` on (text, label) pairs, labels being tasks, 'ambiguous' or 'out_of_scope'.

    Returns {'correct', 'total', 'accuracy', 'per_label': {label: [correct, total]}, 'mistakes': [...]}.
    """
    answers = kb.classify_many([t for t, _ in requests])
    per_label: dict[str, list[int]] = {}
    mistakes = []
    for (text, want), ans in zip(requests, answers, strict=True):
        hit = ans.label == want
        counts = per_label.setdefault(want, [0, 0])
        counts[0] += hit
        counts[1] += 1
        if not hit:
            mistakes.append(dict(text=text, want=want, got=ans.label, scores=kb_row(ans)))
    correct = sum(c for c, _ in per_label.values())
    return dict(correct=correct, total=len(requests), accuracy=correct / max(len(requests), 1),
                per_label=per_label, mistakes=mistakes)


def kb_row(selection: TaskSelection) -> dict[str, float]:
    """The scores an answer carries, by name (for reports)."""
    row = {selection.task: round(selection.score, 4)}
    if selection.runner_up is not None:
        row[selection.runner_up] = round(selection.runner_up_score, 4)
    if selection.unsupported_score is not None:
        row["unsupported"] = round(selection.unsupported_score, 4)
    return row


@functools.cache
def default_task_kb() -> TaskKB:
    """The process-wide TaskKB with the default memory (built on first use)."""
    return TaskKB()


def select_task(text: str) -> TaskSelection:
    """`TaskKB.select_task` on the default KB."""
    return default_task_kb().select_task(text)


def classify(text: str) -> TaskSelection:
    """`TaskKB.classify` on the default KB."""
    return default_task_kb().classify(text)

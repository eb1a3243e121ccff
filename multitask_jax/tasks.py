"""The multi-task system's tasks: their names, in one place for the models, the task KB and the configs."""

from __future__ import annotations

RECONSTRUCTION = "reconstruction"
SEGMENTATION = "segmentation"
TASKS = (RECONSTRUCTION, SEGMENTATION)


def check_task(task: str) -> str:
    """`task` if the system has it, else ValueError naming the tasks."""
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; choose one of {', '.join(map(repr, TASKS))}")
    return task

"""The multi-task system's tools: reproduction jobs, results page, comparison and the task-KB benchmark."""

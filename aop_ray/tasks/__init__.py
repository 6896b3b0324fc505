"""Task registry: the YAML `task.name` picks the class, its other keys are the fields."""

from aop_ray.tasks.base import InputError, Instances, Task, task_params
from aop_ray.tasks.sudoku import Sudoku

TASKS: dict[str, type] = {Sudoku.name: Sudoku}

__all__ = ["TASKS", "InputError", "Instances", "Task", "Sudoku", "task_params"]

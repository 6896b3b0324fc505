"""Task registry: the YAML `task.name` picks the class, its other keys are the fields."""

from aop_ray.tasks.antibody import Antibody
from aop_ray.tasks.base import Instances, SizeFreeForm, Task, TokenStructure, input_vocab_size, mask_id, task_params
from aop_ray.tasks.protein import Protein
from aop_ray.tasks.sat import Sat
from aop_ray.tasks.sudoku import Sudoku

TASKS: dict[str, type] = {Sudoku.name: Sudoku, Sat.name: Sat, Protein.name: Protein, Antibody.name: Antibody}

__all__ = [
    "TASKS",
    "Antibody",
    "Instances",
    "Task",
    "SizeFreeForm",
    "TokenStructure",
    "Protein",
    "Sat",
    "Sudoku",
    "input_vocab_size",
    "mask_id",
    "task_params",
]

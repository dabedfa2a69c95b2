"""The task-graph IR: stages of block tasks, memory projection, fusion, resume records."""

from blocklin.plan.finalize import FinalPlan, PlanReport, StageGroup, finalize
from blocklin.plan.graph import (
    Affine,
    ArrayNode,
    Kernel,
    Plan,
    Stage,
    StageInput,
    Task,
    TaskContext,
    content_name,
    make_stage,
)
from blocklin.plan.reduce import DEFAULT_FAN_IN, SumParts, tree_reduce
from blocklin.plan.runtime import GroupRuntime, run_task

__all__ = [
    "DEFAULT_FAN_IN",
    "Affine",
    "ArrayNode",
    "FinalPlan",
    "GroupRuntime",
    "Kernel",
    "Plan",
    "PlanReport",
    "Stage",
    "StageGroup",
    "StageInput",
    "SumParts",
    "Task",
    "TaskContext",
    "content_name",
    "finalize",
    "make_stage",
    "run_task",
    "tree_reduce",
]

"""How the CLI shows a deploy or destroy plan: its table, the calls of a dry run, a line per step executed."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from koe.deploy.plan import Call, Instruction, Outcome, PackageModel, Plan, Reporter, RequireConfig, Step, Var

_STYLE = {
    "create": "green",
    "update": "yellow",
    "replace": "red",
    "delete": "red",
    "wait": "cyan",
    "no-op": "dim",
}
_PAST = {"create": "created", "update": "updated", "replace": "replaced", "delete": "deleted",
         "wait": "ready", "no-op": "unchanged"}  # fmt: skip


def render_plan(plan: Plan) -> Table:
    table = Table("resource", "name", "action", "detail", title=plan.title, title_justify="left")
    for step in plan.steps:
        style = _STYLE[step.action]
        table.add_row(step.resource, step.name, f"[{style}]{step.action}[/{style}]", step.detail)
    return table


def describe_instruction(instruction: Instruction) -> str:
    """One line per instruction, for --dry-run's list of the calls it would make."""
    if isinstance(instruction, Call):
        args = ", ".join(f"{k}={_short(v)}" for k, v in instruction.params.items())
        return f"{instruction.method}({args})"
    if isinstance(instruction, PackageModel):
        return f"koe.deploy.package.build_model_archive({instruction.model!r}) -> upload {instruction.url}"
    if isinstance(instruction, RequireConfig):
        return f"check that endpoint {instruction.name} runs {instruction.config}"
    limit = f"{instruction.timeout_s:.0f} s"
    on = f" on {instruction.config}" if instruction.config and instruction.until == "InService" else ""
    return f"wait until endpoint {instruction.name} is {instruction.until}{on} (at most {limit})"


def _short(value: Any) -> str:
    if isinstance(value, Var):
        return f"<{value.name}>"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def step_printer(console: Console) -> Reporter:
    """An `execute` reporter that prints one line per step: `created model koe-x`, `restored ...`."""

    def report(step: Step, outcome: Outcome) -> None:
        if outcome == "restored":
            console.print(f"[yellow]restored[/yellow] {step.resource} {step.name}")
            return
        style = _STYLE[step.action]
        console.print(f"[{style}]{_PAST[step.action]}[/{style}] {step.resource} {step.name}")

    return report

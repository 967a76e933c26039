"""The Batch test server's autoscale formula evaluator and OData filter."""

from __future__ import annotations

import pytest

from tests.emulators.batch import autoscale
from tests.emulators.batch.errors import BatchServiceError
from tests.emulators.batch.odata import compile_filter, select

SERVICE = {"$PendingTasks": 7.0, "$ActiveTasks": 5.0, "$CurrentDedicatedNodes": 1.0}


def test_statements_see_earlier_assignments_and_service_variables() -> None:
    result = autoscale.evaluate(
        "$pending = avg($PendingTasks.GetSample(TimeInterval_Minute * 5));\n"
        "$TargetDedicatedNodes = min(10, ceil($pending / 2));"
        "$NodeDeallocationOption = taskcompletion",
        SERVICE,
    )

    assert result.number("$TargetDedicatedNodes", 0) == 4
    assert result.variables["$NodeDeallocationOption"] == "taskcompletion"
    assert result.results_text() == (
        "$pending=7;$TargetDedicatedNodes=4;$NodeDeallocationOption=taskcompletion"
    )


@pytest.mark.parametrize(
    ("formula", "expected"),
    [
        ("$TargetDedicatedNodes = $ActiveTasks > 3 ? 2 : 0", 2),
        ("$TargetDedicatedNodes = $ActiveTasks > 9 ? 2 : 0", 0),
        ("$TargetDedicatedNodes = $ActiveTasks > 3 && $PendingTasks < 5 ? 1 : 3", 3),
        ("$TargetDedicatedNodes = !($ActiveTasks == 5) || 0", 0),
        ("$TargetDedicatedNodes = -2 + 3 * (4 - 1)", 7),
        ("$TargetDedicatedNodes = max(1, 2, 3) - min(4, 5)", -1),
    ],
)
def test_expressions(formula: str, expected: float) -> None:
    assert autoscale.evaluate(formula, SERVICE).number("$TargetDedicatedNodes", 99) == expected


@pytest.mark.parametrize(
    "formula",
    ["$TargetDedicatedNodes = (", "TargetDedicatedNodes = 1", "$x = $Unknown + 1", "$x = 1 / 0"],
)
def test_invalid_formulas_are_syntax_errors(formula: str) -> None:
    with pytest.raises(BatchServiceError) as error:
        autoscale.evaluate(formula, SERVICE)
    assert (error.value.status, error.value.code) == (400, "AutoScalingFormulaSyntaxError")


def test_filter_and_select() -> None:
    tasks: list[dict[str, object]] = [
        {"id": "a", "state": "completed", "executionInfo": {"result": "failure", "exitCode": 3}},
        {"id": "b", "state": "completed", "executionInfo": {"result": "success", "exitCode": 0}},
        {"id": "c", "state": "active"},
    ]

    def ids(expression: str) -> list[object]:
        matches = compile_filter(expression)
        return [t["id"] for t in tasks if matches(t)]

    assert ids("state eq 'completed'") == ["a", "b"]
    assert ids("state eq 'completed' and executionInfo/result eq 'failure'") == ["a"]
    assert ids("executionInfo/exitCode eq 0 or state ne 'completed'") == ["b", "c"]
    assert ids("") == ["a", "b", "c"]
    with pytest.raises(BatchServiceError) as error:
        compile_filter("startswith(id, 'a')")
    assert error.value.code == "InvalidQueryParameterValue"
    assert select(tasks[0], "id,state") == {"id": "a", "state": "completed"}

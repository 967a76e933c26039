"""A small evaluator for Batch autoscale formulas, enough for the formulas tests write.

Supported: statements ``$Name = expression;`` (``;`` or newline separated), numbers, + - * /,
comparisons, ``&&`` ``||`` ``!``, the ternary ``cond ? a : b``, ``min`` ``max`` ``avg`` ``sum``
``count`` ``ceil`` ``floor`` ``round`` ``abs``, the ``TimeInterval_*`` constants, and the service
variables below. A sampled variable's ``GetSample(...)`` / ``GetSamplePercent(...)`` /
``Count()`` return the current value only (this server keeps no history). Bare words such as
``taskcompletion`` are strings (for ``$NodeDeallocationOption``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from tests.emulators.batch.errors import BatchServiceError

TIME_INTERVALS = {
    "TimeInterval_Zero": 0.0,
    "TimeInterval_100ns": 1e-7,
    "TimeInterval_Microsecond": 1e-6,
    "TimeInterval_Millisecond": 1e-3,
    "TimeInterval_Second": 1.0,
    "TimeInterval_Minute": 60.0,
    "TimeInterval_Hour": 3600.0,
    "TimeInterval_Day": 86400.0,
    "TimeInterval_Week": 604800.0,
}

Value = float | str | list[float]

_TOKEN = re.compile(
    r"\s*(?:(?P<num>\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)|(?P<var>\$\w+)|(?P<name>[A-Za-z_]\w*)"
    r"|(?P<op>&&|\|\||==|!=|<=|>=|[-+*/()<>?:!,.]))"
)


@dataclass(frozen=True)
class AutoScaleResult:
    """The variables a formula assigned, in assignment order."""

    variables: dict[str, Value]

    def number(self, name: str, default: float) -> float:
        value = self.variables.get(name, default)
        return _as_number(value)

    def results_text(self) -> str:
        """The ``results`` string of an AutoScaleRun: ``$A=1;$B=2``."""
        return ";".join(f"{k}={_format(v)}" for k, v in self.variables.items())


def evaluate(formula: str, service_variables: Mapping[str, float]) -> AutoScaleResult:
    """Evaluate `formula`; raise BatchServiceError ``AutoScalingFormulaSyntaxError`` if invalid."""
    variables: dict[str, Value] = {}
    for statement in re.split(r"[;\n]", formula):
        if not statement.strip():
            continue
        target, eq, expression = statement.partition("=")
        target = target.strip()
        if not eq or not re.fullmatch(r"\$\w+", target) or expression.startswith("="):
            raise _syntax_error(f"expected '$Name = expression' in {statement.strip()!r}")
        parser = _Parser(expression, {**service_variables, **variables})
        variables[target] = parser.parse()
    return AutoScaleResult(variables)


def _syntax_error(detail: str) -> BatchServiceError:
    return BatchServiceError(
        400,
        "AutoScalingFormulaSyntaxError",
        "The specified autoscale formula has a syntax error.",
        {"Message": detail},
    )


def _as_number(value: Value) -> float:
    if isinstance(value, list):
        return value[-1] if value else 0.0
    if isinstance(value, str):
        raise _syntax_error(f"{value!r} is not a number")
    return value


def _format(value: Value) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        return "[" + ",".join(_format(v) for v in value) + "]"
    return str(int(value)) if float(value).is_integer() else repr(value)


def _flatten(args: list[Value]) -> list[float]:
    out: list[float] = []
    for arg in args:
        if isinstance(arg, list):
            out.extend(arg)
        else:
            out.append(_as_number(arg))
    return out


_FUNCTIONS: dict[str, Callable[[list[float]], float]] = {
    "min": min,
    "max": max,
    "sum": sum,
    "avg": lambda xs: sum(xs) / len(xs),
    "count": lambda xs: float(len(xs)),
    "ceil": lambda xs: float(math.ceil(xs[0])),
    "floor": lambda xs: float(math.floor(xs[0])),
    "round": lambda xs: float(round(xs[0])),
    "abs": lambda xs: abs(xs[0]),
}


class _Parser:
    """Recursive descent over: ternary > or > and > comparison > sum > product > unary > atom."""

    def __init__(self, text: str, variables: Mapping[str, Value]) -> None:
        self.tokens: list[str] = []
        pos = 0
        text = text.strip()
        while pos < len(text):
            match = _TOKEN.match(text, pos)
            if match is None or match.end() == pos:
                raise _syntax_error(f"unexpected character at {text[pos:]!r}")
            self.tokens.append(match.group().strip())
            pos = match.end()
        self.pos = 0
        self.variables = variables

    def parse(self) -> Value:
        value = self.ternary()
        if self.pos != len(self.tokens):
            raise _syntax_error(f"unexpected {self.tokens[self.pos]!r}")
        return value

    def peek(self) -> str | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self, expected: str | None = None) -> str:
        token = self.peek()
        if token is None or (expected is not None and token != expected):
            raise _syntax_error(f"expected {expected or 'a value'}, found {token!r}")
        self.pos += 1
        return token

    def ternary(self) -> Value:
        condition = self.logical_or()
        if self.peek() != "?":
            return condition
        self.take("?")
        when_true = self.ternary()
        self.take(":")
        when_false = self.ternary()
        return when_true if _as_number(condition) else when_false

    def logical_or(self) -> Value:
        left = self.logical_and()
        while self.peek() == "||":
            self.take()
            right = self.logical_and()
            left = float(bool(_as_number(left)) or bool(_as_number(right)))
        return left

    def logical_and(self) -> Value:
        left = self.comparison()
        while self.peek() == "&&":
            self.take()
            right = self.comparison()
            left = float(bool(_as_number(left)) and bool(_as_number(right)))
        return left

    def comparison(self) -> Value:
        left = self.additive()
        ops: dict[str, Callable[[float, float], bool]] = {
            "<": lambda a, b: a < b,
            ">": lambda a, b: a > b,
            "<=": lambda a, b: a <= b,
            ">=": lambda a, b: a >= b,
            "==": lambda a, b: a == b,
            "!=": lambda a, b: a != b,
        }
        while self.peek() in ops:
            op = ops[self.take()]
            right = self.additive()
            left = float(op(_as_number(left), _as_number(right)))
        return left

    def additive(self) -> Value:
        left = self.multiplicative()
        while self.peek() in ("+", "-"):
            op = self.take()
            right = _as_number(self.multiplicative())
            left = _as_number(left) + right if op == "+" else _as_number(left) - right
        return left

    def multiplicative(self) -> Value:
        left = self.unary()
        while self.peek() in ("*", "/"):
            op = self.take()
            right = _as_number(self.unary())
            if op == "/" and right == 0:
                raise _syntax_error("division by zero")
            left = _as_number(left) * right if op == "*" else _as_number(left) / right
        return left

    def unary(self) -> Value:
        if self.peek() == "-":
            self.take()
            return -_as_number(self.unary())
        if self.peek() == "!":
            self.take()
            return float(not _as_number(self.unary()))
        return self.postfix(self.atom())

    def postfix(self, value: Value) -> Value:
        # $Var.GetSample(...), $Var.GetSamplePercent(...), $Var.Count(): the current value only.
        while self.peek() == ".":
            self.take(".")
            method = self.take()
            self.arguments()
            if method == "GetSamplePercent":
                value = 100.0
            elif method == "Count":
                value = 1.0
            elif method == "GetSample":
                value = [_as_number(value)]
            else:
                raise _syntax_error(f"unknown method {method!r}")
        return value

    def arguments(self) -> list[Value]:
        self.take("(")
        args: list[Value] = []
        if self.peek() != ")":
            args.append(self.ternary())
            while self.peek() == ",":
                self.take(",")
                args.append(self.ternary())
        self.take(")")
        return args

    def atom(self) -> Value:
        lexeme = self.take()
        if lexeme == "(":
            value = self.ternary()
            self.take(")")
            return value
        if lexeme[0].isdigit():
            return float(lexeme)
        if lexeme.startswith("$"):
            if lexeme not in self.variables:
                raise _syntax_error(f"unknown variable {lexeme}")
            return self.variables[lexeme]
        if lexeme in TIME_INTERVALS:
            return TIME_INTERVALS[lexeme]
        if lexeme in _FUNCTIONS and self.peek() == "(":
            values = _flatten(self.arguments())
            if not values:
                raise _syntax_error(f"{lexeme}() needs arguments")
            return _FUNCTIONS[lexeme](values)
        if re.fullmatch(r"[A-Za-z_]\w*", lexeme) and self.peek() != "(":
            return lexeme
        raise _syntax_error(f"unexpected {lexeme!r}")

"""``calculator``: arithmetic evaluated by walking the AST, never by eval().

Only numbers, + - * / // % **, unary +/-, parentheses, abs/round/min/max/sqrt and the
constants pi and e are understood; anything else is refused before evaluation. Sizes are
bounded so a 500-character expression cannot tie up a worker (9**9**9, huge shifts of
round()'s digits, float overflow).
"""

from __future__ import annotations

import ast
import math
import operator
from collections.abc import Callable
from typing import Any

from podium.tools_catalog import BUILTIN_TOOLS
from podium_agent_worker.tools.base import ToolContext, ToolError

Number = int | float

MAX_EXPRESSION_CHARS = 500
# Integers beyond this many bits (~1200 digits) are refused: cheap to check, and far past
# anything an agent needs.
MAX_INT_BITS = 4096
MAX_ROUND_DIGITS = 100

_BINARY: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
}
_CONSTANTS: dict[str, float] = {"pi": math.pi, "e": math.e}
# name -> (min args, max args or None)
_FUNCTIONS: dict[str, tuple[int, int | None]] = {
    "abs": (1, 1),
    "round": (1, 2),
    "min": (1, None),
    "max": (1, None),
    "sqrt": (1, 1),
}
_SYMBOLS: dict[type[ast.operator], str] = {
    ast.BitXor: "^",
    ast.BitAnd: "&",
    ast.BitOr: "|",
    ast.LShift: "<<",
    ast.RShift: ">>",
    ast.MatMult: "@",
}
_SUPPORTED = "numbers, + - * / // % **, parentheses, abs, round, min, max, sqrt, pi, e"


def evaluate(expression: str) -> Number:
    """The value of ``expression``; ToolError explains any refusal."""
    text = expression.strip()
    if not text:
        raise ToolError("the expression is empty")
    if len(text) > MAX_EXPRESSION_CHARS:
        raise ToolError(f"the expression is longer than {MAX_EXPRESSION_CHARS} characters")
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as exc:
        raise ToolError(f"not a valid arithmetic expression ({exc.msg})") from None
    except (RecursionError, MemoryError):
        raise ToolError("the expression is nested too deeply") from None
    try:
        return _eval(tree.body)
    except RecursionError:
        raise ToolError("the expression is nested too deeply") from None


def format_number(value: Number) -> str:
    """Integers as integers; floats with up to 12 significant digits."""
    if isinstance(value, int):
        return str(value)
    if value == 0:
        return "0"  # also for -0.0
    return f"{value:.12g}"


def _eval(node: ast.expr) -> Number:
    if isinstance(node, ast.Constant):
        value = node.value
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ToolError(f"{value!r} is not a number; only arithmetic is supported")
        return _checked(value)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.UAdd | ast.USub):
        operand = _eval(node.operand)
        return operand if isinstance(node.op, ast.UAdd) else -operand
    if isinstance(node, ast.BinOp):
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow):
            return _power(left, right)
        op = _BINARY.get(type(node.op))
        if op is None:
            hint = "; use ** for powers" if isinstance(node.op, ast.BitXor) else ""
            raise ToolError(f"operator {_symbol(node.op)} is not supported{hint}")
        try:
            return _checked(op(left, right))
        except ZeroDivisionError:
            raise ToolError("division by zero") from None
        except OverflowError:
            raise ToolError("the result is too large") from None
    if isinstance(node, ast.Name):
        if node.id in _CONSTANTS:
            return _CONSTANTS[node.id]
        if node.id in _FUNCTIONS:
            raise ToolError(f"{node.id} is a function; call it, e.g. {node.id}(...)")
        raise ToolError(f"unknown name '{node.id}'; the only constants are pi and e")
    if isinstance(node, ast.Call):
        return _call(node)
    if isinstance(node, ast.Attribute):
        raise ToolError("attribute access is not allowed")
    raise ToolError(f"{type(node).__name__} is not allowed; supported: {_SUPPORTED}")


def _call(node: ast.Call) -> Number:
    if not isinstance(node.func, ast.Name) or node.func.id not in _FUNCTIONS:
        raise ToolError(f"only these functions can be called: {', '.join(_FUNCTIONS)}")
    name = node.func.id
    if node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
        raise ToolError(f"{name}() takes plain positional arguments only")
    low, high = _FUNCTIONS[name]
    if len(node.args) < low or (high is not None and len(node.args) > high):
        wanted = str(low) if low == high else f"{low} or more" if high is None else "1 or 2"
        raise ToolError(f"{name}() takes {wanted} argument(s), got {len(node.args)}")
    args = [_eval(a) for a in node.args]
    if name == "abs":
        return _checked(abs(args[0]))
    if name == "min":
        return min(args)
    if name == "max":
        return max(args)
    if name == "sqrt":
        if args[0] < 0:
            raise ToolError("sqrt of a negative number is not a real number")
        try:
            return _checked(math.sqrt(args[0]))
        except OverflowError:
            raise ToolError("the result is too large") from None
    # round
    if len(args) == 1:
        return _checked(round(args[0]))
    digits = args[1]
    if not isinstance(digits, int):
        raise ToolError("round()'s second argument must be an integer")
    if abs(digits) > MAX_ROUND_DIGITS:
        raise ToolError(f"round() digits must be within ±{MAX_ROUND_DIGITS}")
    return _checked(round(args[0], digits))


def _int_power_too_large(base: Number, exponent: Number) -> bool:
    # Estimates the result's size before computing it, so 9**9**9 is refused at once.
    if not (isinstance(base, int) and isinstance(exponent, int)):
        return False  # float powers overflow quickly and loudly (OverflowError)
    if exponent < 0 or abs(base) <= 1:
        return False
    return exponent.bit_length() > 32 or exponent * math.log2(abs(base)) > MAX_INT_BITS


def _power(base: Number, exponent: Number) -> Number:
    if _int_power_too_large(base, exponent):
        raise ToolError("the result is too large")
    try:
        result = base**exponent
    except ZeroDivisionError:
        raise ToolError("division by zero (zero to a negative power)") from None
    except OverflowError:
        raise ToolError("the result is too large") from None
    if isinstance(result, complex):
        raise ToolError("the result is not a real number (fractional power of a negative)")
    return _checked(result)


def _checked(value: Number) -> Number:
    if isinstance(value, float) and not math.isfinite(value):
        raise ToolError("the result is too large (floating-point overflow)")
    if isinstance(value, int) and value.bit_length() > MAX_INT_BITS:
        raise ToolError("the result is too large")
    return value


def _symbol(op: ast.operator) -> str:
    return _SYMBOLS.get(type(op), type(op).__name__)


class CalculatorTool:
    spec = BUILTIN_TOOLS["calculator"]

    def run(self, arguments: dict[str, Any], ctx: ToolContext) -> str:
        return format_number(evaluate(str(arguments["expression"])))

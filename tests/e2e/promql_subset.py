"""Parse and evaluate the small part of PromQL the chart's alert rules are written in.

Why not promtool: it is built from github.com/prometheus/prometheus, whose go.mod pulls about 250
modules (every service-discovery SDK: AWS, Azure, GCE, Kubernetes...), far beyond the few minutes
a cold build of a test tool may take. The chart's expressions need little: numbers, ``time()``,
metric selectors (with ``=``/``!=`` matchers), arithmetic, and comparisons that filter a vector
against a scalar, with PromQL's precedence. Anything else is refused, so a rule that grows beyond
this subset fails its test instead of being half-understood. Evaluating a rule on made-up samples
checks what it means (which series fire at which threshold), not only that it parses.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

Labels = Mapping[str, str]
Sample = tuple[Labels, float]
Value = float | list[Sample]

_TOKEN = re.compile(
    r"\s*(?:(?P<number>\d+(?:\.\d+)?(?:[eE][+-]?\d+)?)|(?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)"
    r'|(?P<string>"[^"\\]*")|(?P<op>>=|<=|==|!=|[-+*/%<>=(){},]))'
)
_ARITHMETIC: dict[str, Callable[[float, float], float]] = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "/": operator.truediv,
    "%": operator.mod,
}
_COMPARISON: dict[str, Callable[[float, float], bool]] = {
    "==": operator.eq,
    "!=": operator.ne,
    ">": operator.gt,
    "<": operator.lt,
    ">=": operator.ge,
    "<=": operator.le,
}
#: Lowest first, as in PromQL (``or`` < ``and``/``unless`` < comparisons < ``+ -`` < ``* / %``).
_LEVELS: tuple[frozenset[str], ...] = (frozenset(_COMPARISON), frozenset("+-"), frozenset("*/%"))
_KEYWORDS = {"and", "or", "unless", "bool", "by", "without", "on", "ignoring", "offset", "group_left"}


class PromQLSubsetError(ValueError):
    pass


@dataclass(frozen=True)
class Number:
    value: float


@dataclass(frozen=True)
class Time:
    """``time()``: the evaluation time, in seconds since the epoch."""


@dataclass(frozen=True)
class Selector:
    metric: str
    matchers: tuple[tuple[str, str, str], ...] = ()  # (label, "=" or "!=", value)


@dataclass(frozen=True)
class Negate:
    operand: Node


@dataclass(frozen=True)
class Binary:
    op: str
    left: Node
    right: Node


Node = Number | Time | Selector | Negate | Binary


def _tokens(text: str) -> list[tuple[str, str]]:
    found, position = [], 0
    while text[position:].strip():
        match = _TOKEN.match(text, position)
        if not match:
            raise PromQLSubsetError(f"unexpected text at {position}: {text[position:]!r}")
        kind = match.lastgroup
        assert kind is not None
        found.append((kind, match.group(kind)))
        position = match.end()
    return found


class _Parser:
    def __init__(self, text: str) -> None:
        self.tokens = _tokens(text)
        self.next = 0

    def peek(self) -> str | None:
        return self.tokens[self.next][1] if self.next < len(self.tokens) else None

    def take(self, expected: str | None = None) -> tuple[str, str]:
        if self.next >= len(self.tokens):
            raise PromQLSubsetError(f"expression ends early (expected {expected or 'more'})")
        token = self.tokens[self.next]
        if expected is not None and token[1] != expected:
            raise PromQLSubsetError(f"expected {expected!r}, found {token[1]!r}")
        self.next += 1
        return token

    def expression(self, level: int = 0) -> Node:
        if level == len(_LEVELS):
            return self.unary()
        node = self.expression(level + 1)
        while self.peek() in _LEVELS[level]:
            op = self.take()[1]
            node = Binary(op, node, self.expression(level + 1))
        return node

    def unary(self) -> Node:
        if self.peek() == "-":
            self.take()
            return Negate(self.unary())
        return self.primary()

    def primary(self) -> Node:
        kind, text = self.take()
        if kind == "number":
            return Number(float(text))
        if text == "(":
            node = self.expression()
            self.take(")")
            return node
        if kind != "ident" or text in _KEYWORDS:
            raise PromQLSubsetError(f"{text!r} is outside the subset")
        if self.peek() == "(":
            if text != "time":
                raise PromQLSubsetError(f"function {text}() is outside the subset")
            self.take("(")
            self.take(")")
            return Time()
        matchers: list[tuple[str, str, str]] = []
        if self.peek() == "{":
            self.take("{")
            while self.peek() != "}":
                label = self.take()[1]
                op = self.take()[1]
                kind, value = self.take()
                if op not in ("=", "!=") or kind != "string":
                    raise PromQLSubsetError(f"matcher {label}{op}{value} is outside the subset")
                matchers.append((label, op, value[1:-1]))
                if self.peek() == ",":
                    self.take(",")
            self.take("}")
        return Selector(text, tuple(matchers))


def parse(text: str) -> Node:
    parser = _Parser(text)
    node = parser.expression()
    if parser.peek() is not None:
        raise PromQLSubsetError(f"unexpected {parser.peek()!r} after a complete expression")
    return node


def metric_names(node: Node) -> set[str]:
    if isinstance(node, Selector):
        return {node.metric}
    if isinstance(node, Negate):
        return metric_names(node.operand)
    if isinstance(node, Binary):
        return metric_names(node.left) | metric_names(node.right)
    return set()


def evaluate(node: Node, series: Mapping[str, Sequence[Sample]], now: float) -> Value:
    """The value of ``node`` at ``now`` over instant samples ``series`` (metric name -> samples)."""
    if isinstance(node, Number):
        return node.value
    if isinstance(node, Time):
        return now
    if isinstance(node, Selector):
        return [
            (labels, value)
            for labels, value in series.get(node.metric, ())
            if all((labels.get(label, "") == want) == (op == "=") for label, op, want in node.matchers)
        ]
    if isinstance(node, Negate):
        return _binary("*", -1.0, evaluate(node.operand, series, now))
    return _binary(node.op, evaluate(node.left, series, now), evaluate(node.right, series, now))


def _binary(op: str, left: Value, right: Value) -> Value:
    """PromQL's rules for a vector and a scalar: arithmetic applies to each sample, a comparison
    keeps the samples for which it holds (with their own values)."""
    if op in _ARITHMETIC:
        apply = _ARITHMETIC[op]
        if isinstance(left, list) and not isinstance(right, list):
            return [(labels, apply(value, right)) for labels, value in left]
        if isinstance(right, list) and not isinstance(left, list):
            return [(labels, apply(left, value)) for labels, value in right]
        if not isinstance(left, list) and not isinstance(right, list):
            return apply(left, right)
    else:
        compare = _COMPARISON[op]
        if isinstance(left, list) and not isinstance(right, list):
            return [(labels, value) for labels, value in left if compare(value, right)]
        if isinstance(right, list) and not isinstance(left, list):
            return [(labels, value) for labels, value in right if compare(left, value)]
        if not isinstance(left, list) and not isinstance(right, list):
            raise PromQLSubsetError("comparisons between scalars need 'bool' (outside the subset)")
    raise PromQLSubsetError("operations between two vectors are outside the subset")

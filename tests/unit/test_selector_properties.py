"""Property tests for selectors: text round-trips, a reference evaluator, and garbage input."""

from __future__ import annotations

from collections.abc import Callable, Mapping

import hypothesis.strategies as st
from hypothesis import HealthCheck, given, settings

from policy.selector import (
    All,
    And,
    Contains,
    EndsWith,
    Equals,
    Global,
    Has,
    In,
    Not,
    NotEquals,
    NotIn,
    Or,
    Selector,
    SelectorError,
    StartsWith,
    labels_used,
    parse,
)

# Bounded so the whole module stays well under the 20 s budget.
PROPS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

KEY_ALPHABET = "abcXYZ019_./-"
# Operator words are in the pool on purpose: they must work as label keys.
KEY_POOL = ["a", "b", "c", "in", "not", "has", "all", "global", "with", "a.b/c-d_e", "8x"]
VALUE_POOL = ["", "x", "y", "xy", "yx", "it's", 'say "hi"', " && ", "(", "{'}"]
VALUE_ALPHABET = "xy '\"&|!(){},=é\t"

keys = st.one_of(st.sampled_from(KEY_POOL), st.text(KEY_ALPHABET, min_size=1, max_size=6))
values = st.one_of(
    st.sampled_from(VALUE_POOL),
    st.text(VALUE_ALPHABET, max_size=5).filter(lambda v: not ("'" in v and '"' in v)),
)
value_sets = st.lists(values, max_size=4)

leaves = st.one_of(
    st.just(All()),
    st.just(Global()),
    st.builds(Has, keys),
    st.builds(Equals, keys, values),
    st.builds(NotEquals, keys, values),
    st.builds(In, keys, value_sets),
    st.builds(NotIn, keys, value_sets),
    st.builds(StartsWith, keys, values),
    st.builds(EndsWith, keys, values),
    st.builds(Contains, keys, values),
)


def _extend(children: st.SearchStrategy[Selector]) -> st.SearchStrategy[Selector]:
    return st.one_of(
        st.builds(Not, children),
        st.builds(And, st.lists(children, min_size=2, max_size=4)),
        st.builds(Or, st.lists(children, min_size=2, max_size=4)),
    )


selectors = st.recursive(leaves, _extend, max_leaves=12)
label_maps = st.dictionaries(keys, values, max_size=6)


# --- an independent renderer: random whitespace, quoting, spelling and redundant parentheses ---

Draw = Callable[[st.SearchStrategy], object]

_PREC = {Or: 1, And: 2}


def _ws(draw: Draw, at_least: int = 0) -> str:
    return draw(st.text(" \t\n\r", min_size=at_least, max_size=2))  # type: ignore[return-value]


def _quoted(draw: Draw, value: str) -> str:
    if '"' in value:
        return f"'{value}'"
    if "'" in value:
        return f'"{value}"'
    quote = draw(st.sampled_from(["'", '"']))
    return f"{quote}{value}{quote}"


def _set(draw: Draw, members: tuple[str, ...]) -> str:
    # Written in any order and with repeats: the parsed set must not care.
    written = draw(st.lists(st.sampled_from(members), min_size=len(members))) if members else []
    written = list(members) + written  # type: ignore[operator]
    written = draw(st.permutations(written))  # type: ignore[assignment]
    parts = [_ws(draw) + _quoted(draw, v) + _ws(draw) for v in written]
    return "{" + _ws(draw) + ",".join(parts) + "}"


def _operator(draw: Draw, spaced: str, joined: str | None) -> str:
    if joined is not None and draw(st.booleans()):
        return joined
    first, second = spaced.split(" ")
    return first + _ws(draw, 1) + second


def render(draw: Draw, node: Selector, min_prec: int = 0) -> str:
    prec = _PREC.get(type(node), 3)
    text: str
    match node:
        case Or(operands=ops):
            text = (_ws(draw) + "||" + _ws(draw)).join(render(draw, op, 1) for op in ops)
        case And(operands=ops):
            text = (_ws(draw) + "&&" + _ws(draw)).join(render(draw, op, 2) for op in ops)
        case Not(operand=op):
            text = "!" + _ws(draw) + render(draw, op, 3)
        case All():
            text = "all" + _ws(draw) + "(" + _ws(draw) + ")"
        case Global():
            text = "global" + _ws(draw) + "(" + _ws(draw) + ")"
        case Has(key=k):
            text = "has" + _ws(draw) + "(" + _ws(draw) + k + _ws(draw) + ")"
        case Equals(key=k, value=v):
            text = k + _ws(draw) + "==" + _ws(draw) + _quoted(draw, v)
        case NotEquals(key=k, value=v):
            text = k + _ws(draw) + "!=" + _ws(draw) + _quoted(draw, v)
        case In(key=k, values=vs):
            text = k + _ws(draw, 1) + "in" + _ws(draw) + _set(draw, vs)
        case NotIn(key=k, values=vs):
            op = _operator(draw, "not in", "notin")
            text = k + _ws(draw, 1) + op + _ws(draw) + _set(draw, vs)
        case StartsWith(key=k, value=v):
            op = _operator(draw, "starts with", "startswith")
            text = k + _ws(draw, 1) + op + _ws(draw) + _quoted(draw, v)
        case EndsWith(key=k, value=v):
            op = _operator(draw, "ends with", "endswith")
            text = k + _ws(draw, 1) + op + _ws(draw) + _quoted(draw, v)
        case Contains(key=k, value=v):
            text = k + _ws(draw, 1) + "contains" + _ws(draw) + _quoted(draw, v)
        case _:
            raise AssertionError(f"unhandled node {node!r}")
    if prec < min_prec or draw(st.integers(0, 9)) == 0:
        text = "(" + _ws(draw) + text + _ws(draw) + ")"
    return text


# --- an independent evaluator, written from Calico's documented semantics ----------------------


def reference(node: Selector, labels: Mapping[str, str]) -> bool:
    match node:
        case All() | Global():
            return True
        case Has(key=k):
            return k in labels
        case Equals(key=k, value=v):
            return k in labels and labels[k] == v
        case NotEquals(key=k, value=v):
            return not (k in labels and labels[k] == v)
        case In(key=k, values=vs):
            return k in labels and any(labels[k] == v for v in vs)
        case NotIn(key=k, values=vs):
            return not (k in labels and any(labels[k] == v for v in vs))
        case StartsWith(key=k, value=v):
            return k in labels and labels[k][: len(v)] == v
        case EndsWith(key=k, value=v):
            return (
                k in labels
                and len(labels[k]) >= len(v)
                and labels[k][len(labels[k]) - len(v) :] == v
            )
        case Contains(key=k, value=v):
            return k in labels and any(
                labels[k][i : i + len(v)] == v for i in range(len(labels[k]) - len(v) + 1)
            )
        case Not(operand=op):
            return not reference(op, labels)
        case And(operands=ops):
            return all(reference(op, labels) for op in ops)
        case Or(operands=ops):
            return any(reference(op, labels) for op in ops)
    raise AssertionError(f"unhandled node {node!r}")


# --- properties ---------------------------------------------------------------------------------


@PROPS
@given(st.data(), selectors)
def test_random_rendering_parses_back_to_the_same_ast(data: st.DataObject, sel: Selector) -> None:
    text = _ws(data.draw) + render(data.draw, sel) + _ws(data.draw)
    parsed = parse(text)
    assert parsed == sel
    assert hash(parsed) == hash(sel)
    assert str(parsed) == str(sel)


@PROPS
@given(selectors)
def test_canonical_string_round_trips(sel: Selector) -> None:
    text = str(sel)
    again = parse(text)
    assert again == sel
    assert str(again) == text


def _values_in(sel: Selector) -> set[str]:
    found: set[str] = set()
    stack = [sel]
    while stack:
        node = stack.pop()
        if isinstance(node, And | Or):
            stack.extend(node.operands)
        elif isinstance(node, Not):
            stack.append(node.operand)
        elif isinstance(node, In | NotIn):
            found.update(node.values)
        elif hasattr(node, "value"):
            found.add(node.value)  # type: ignore[attr-defined]
    return found


def labels_for(draw: Draw, sel: Selector) -> dict[str, str]:
    """Labels aimed at `sel`: its own keys, holding its values and their near misses.

    Independent random maps rarely share a key with the selector, so most comparisons
    would never be exercised.
    """
    near: set[str] = set()
    for v in _values_in(sel):
        near.update({v, v + "x", "x" + v, v[1:], v[:-1], "x" + v + "x"})
    value_choice = st.one_of(st.sampled_from(sorted(near)), values) if near else values
    labels: dict[str, str] = {}
    for key in sorted(labels_used(sel)):
        if draw(st.integers(0, 3)):
            labels[key] = draw(value_choice)  # type: ignore[assignment]
    labels.update(draw(label_maps))  # type: ignore[arg-type]
    return labels


@PROPS
@given(st.data(), selectors)
def test_evaluate_agrees_with_reference(data: st.DataObject, sel: Selector) -> None:
    parsed = parse(str(sel))
    for _ in range(4):
        labels = labels_for(data.draw, sel)
        want = reference(sel, labels)
        assert sel.evaluate(labels) is want
        assert parsed.evaluate(labels) is want


@PROPS
@given(st.data(), selectors, keys, values)
def test_labels_outside_labels_used_never_change_the_result(
    data: st.DataObject, sel: Selector, key: str, value: str
) -> None:
    labels = labels_for(data.draw, sel)
    used = labels_used(sel)
    if key in used:
        key = "unused-" + "-".join(sorted(used))
    before = sel.evaluate(labels)
    assert sel.evaluate({**labels, key: value}) is before
    assert sel.evaluate({k: v for k, v in labels.items() if k in used}) is before


# Characters the grammar reacts to, plus a few it never accepts, so garbage is near-valid.
GARBAGE_ALPHABET = "ab in not has all global starts ends with contains ()!{},=&|'\" \t\n@é\x00"


def _check_error(text: str, err: SelectorError) -> None:
    assert 0 <= err.position <= len(text)
    assert err.expected
    assert err.selector == text
    assert str(err).startswith(f'selector "{text}": ')


@PROPS
@given(st.text(GARBAGE_ALPHABET, max_size=40))
def test_garbage_raises_only_selector_error(text: str) -> None:
    try:
        sel = parse(text)
    except SelectorError as err:
        _check_error(text, err)
    else:
        assert parse(str(sel)) == sel


@PROPS
@given(st.data(), selectors)
def test_mutated_valid_text_raises_only_selector_error(data: st.DataObject, sel: Selector) -> None:
    text = render(data.draw, sel)
    pos = data.draw(st.integers(0, len(text)))
    cut = data.draw(st.integers(0, 3))
    insert = data.draw(st.text(GARBAGE_ALPHABET, max_size=2))
    mutated = text[:pos] + insert + text[pos + cut :]
    try:
        again = parse(mutated)
    except SelectorError as err:
        _check_error(mutated, err)
    else:
        assert parse(str(again)) == again


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=30))
def test_arbitrary_unicode_raises_only_selector_error(text: str) -> None:
    try:
        parse(text)
    except SelectorError as err:
        _check_error(text, err)

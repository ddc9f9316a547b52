"""gagavatar_blender/driver_expressions.py without Blender: the rig's driver expressions evaluate to
the intended numbers (Python's ``eval`` of our own strings, on a dict of variables) and use only
what Blender's native simple expressions accept (numbers, variable names, ``+ - * /``, unary minus,
parentheses; no function calls, at most 255 characters). tests/test_blender_rig.py checks the
same strings inside Blender (``is_simple_expression`` and FLAME parity)."""
import math
import re

import numpy as np
import pytest

from tests.conftest import load_script

# gagavatar_blender/__init__.py imports bpy: load the bpy-free module by its path.
dx = load_script("gagavatar_blender/driver_expressions.py")

TOKEN = re.compile(r"\s*(?:(?P<number>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)|(?P<name>[A-Za-z_][A-Za-z0-9_]*)"
                   r"|(?P<op>[-+*/()]))")


def tokens(expression: str) -> list[tuple[str, str]]:
    """``(kind, text)`` of each token; fails on any character a simple expression would not hold."""
    out, pos = [], 0
    while pos < len(expression):
        match = TOKEN.match(expression, pos)
        assert match and match.end() > pos, f"unexpected {expression[pos:pos + 10]!r} in {expression!r}"
        out.append((match.lastgroup, match.group(match.lastgroup)))
        pos = match.end()
    return out


def assert_simple(expression: str, variables) -> None:
    """Only numbers, the given variable names and + - * / ( ); no name is called; <= 255 characters."""
    assert 0 < len(expression) <= 255
    found = tokens(expression)
    for (kind, text), following in zip(found, found[1:] + [("end", "")]):
        if kind == "name":
            assert text in variables, f"{text} is not a driver variable in {expression!r}"
            assert following[1] != "(", f"function call {text}( in {expression!r}"
    depth = 0
    for kind, text in found:
        depth += {"(": 1, ")": -1}.get(text, 0)
        assert depth >= 0
    assert depth == 0


def evaluate(expression: str, variables: dict) -> float:
    return eval(expression, {"__builtins__": {}}, dict(variables))  # our own strings only


def unit_quaternion(rng) -> np.ndarray:
    q = rng.normal(size=4)
    return q / np.linalg.norm(q)


def rotation(q) -> np.ndarray:
    """Rodrigues' formula from the quaternion's axis and angle (independent of the expressions)."""
    w, v = q[0], np.asarray(q[1:])
    angle = 2 * math.atan2(np.linalg.norm(v), w)
    axis = v / max(np.linalg.norm(v), 1e-300)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    return np.eye(3) + math.sin(angle) * k + (1 - math.cos(angle)) * k @ k


def quaternion_variables(q) -> dict:
    return dict(zip(dx.QUATERNION, map(float, q)))


@pytest.mark.parametrize("seed", range(5))
def test_r_minus_i_is_the_rotation_minus_identity(seed):
    q = unit_quaternion(np.random.default_rng(seed))
    got = np.array([evaluate(e, quaternion_variables(q)) for e in dx.R_MINUS_I]).reshape(3, 3)
    np.testing.assert_allclose(got, rotation(q) - np.eye(3), atol=1e-12)
    for expression in dx.R_MINUS_I:
        assert_simple(expression, dx.QUATERNION)


def test_r_minus_i_is_zero_at_rest():
    assert all(evaluate(e, quaternion_variables((1.0, 0.0, 0.0, 0.0))) == 0 for e in dx.R_MINUS_I)


def test_linear_combination_is_the_dot_product():
    rng = np.random.default_rng(0)
    names = [f"e{k}" for k in range(91, 101)]  # the longest names the rig uses
    # Signs, exponent notation and the widest %+.8g forms (the rig's joint basis is ~1e-3).
    coefficients = [-1.2345678e-05, 0.0016175592, -0.0022537097, 3.0e-12, -7.0, 123456789.0,
                    -9.8765432e-11, 0.5, -0.33333333333, 1e-300]
    values = rng.normal(size=10) * 3
    expression = dx.linear_combination(coefficients, names)
    assert_simple(expression, names)
    assert expression.startswith("-1.2345678e-05*e91+0.0016175592*e92-") and not expression.startswith("+")
    want = float(np.dot(coefficients, values))
    scale = float(np.abs(np.multiply(coefficients, values)).sum())
    assert evaluate(expression, dict(zip(names, values))) == pytest.approx(want, abs=1e-8 * scale)
    positive = dx.linear_combination([2.5, -1.0], ["a", "b"])
    assert positive == "2.5*a-1*b" and evaluate(positive, {"a": 2.0, "b": 3.0}) == 2.0


def test_linear_combination_of_the_rig_fits_blender():
    """The rig's chunks (10 coefficients as numpy float64, negative and tiny) stay within 255 characters."""
    coefficients = -np.full(10, 1.2345678e-10) * (1 + np.arange(10) * 1e-9)
    expression = dx.linear_combination(coefficients, [f"e{k}" for k in range(91, 101)])
    assert len(expression) <= dx.MAX_LENGTH


def test_total_is_the_sum():
    names = [f"d{n}" for n in range(10)]
    expression = dx.total(names)
    assert expression == "(d0+d1+d2+d3+d4+d5+d6+d7+d8+d9)"
    assert evaluate(expression, {n: i + 0.5 for i, n in enumerate(names)}) == sum(i + 0.5 for i in range(10))


@pytest.mark.parametrize("translation", [None, "t"])
@pytest.mark.parametrize("seed", range(3))
def test_joint_shift_is_i_minus_r_times_the_joint_offset(seed, translation):
    """Row r of ``(I - R) dJ`` (+ t): a DEF bone's location, dJ an axis's sum of 10 partial sums."""
    rng = np.random.default_rng(seed)
    q = unit_quaternion(rng)
    names = [[f"d{c * 10 + n}" for n in range(10)] for c in range(3)]
    partial = rng.normal(size=(3, 10))
    variables = {**quaternion_variables(q), **{n: float(v) for row, vals in zip(names, partial)
                                                for n, v in zip(row, vals)}, "t": 0.75}
    want = (np.eye(3) - rotation(q)) @ partial.sum(axis=1) + (0.75 if translation else 0.0)
    for r in range(3):
        expression = dx.joint_shift(r, names, translation)
        assert_simple(expression, set(variables))
        assert evaluate(expression, variables) == pytest.approx(want[r], abs=1e-12)
    assert dx.joint_shift(0, names, "t").startswith("t-((-2*(y*y+z*z))*(d0+d1+")


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="coefficients"):
        dx.linear_combination([1.0, 2.0], ["a"])
    for bad in (math.nan, math.inf):
        with pytest.raises(ValueError, match="coefficient of a"):
            dx.linear_combination([bad], ["a"])
    for name in ("2a", "a b", "f(x)", ""):
        with pytest.raises(ValueError, match="variable name"):
            dx.total([name])
    with pytest.raises(ValueError, match="255"):
        dx.linear_combination([1.0] * 40, [f"variable{k}" for k in range(40)])
    with pytest.raises(ValueError):
        dx.joint_shift(3, [["a"], ["b"], ["c"]])

"""The check digits of SPEC §2.5: 全国地方公共団体コード and GS1-128 コンビニ収納 codes."""

from __future__ import annotations

__all__ = ["lg_code_check_digit", "gs1_check_digit", "is_valid_lg_code", "is_valid_gs1_cvs_code"]


def lg_code_check_digit(first_five: str) -> int:
    """Check digit of a 全国地方公共団体コード: weights 6,5,4,3,2; (11 − Σ mod 11) mod 10.

    >>> lg_code_check_digit("13104")
    1
    """
    if len(first_five) != 5 or not first_five.isascii() or not first_five.isdigit():
        raise ValueError("a 全国地方公共団体コード has five digits before its check digit")
    total = sum(int(digit) * weight for digit, weight in zip(first_five, (6, 5, 4, 3, 2)))
    return (11 - total % 11) % 10


def is_valid_lg_code(code: str) -> bool:
    """Whether ``code`` is six ASCII digits whose last is the right check digit."""
    return (len(code) == 6 and code.isascii() and code.isdigit()
            and lg_code_check_digit(code[:5]) == int(code[5]))


def gs1_check_digit(digits_without_check: str) -> int:
    """GS1 modulo-10 check digit of the digits that precede it.

    Positions count from the right with the check digit at position 1, so the
    digit just before it is position 2 (even, weight 3), the next position 3
    (odd, weight 1), and so on: check = (10 − (3A + B) mod 10) mod 10.
    """
    if not digits_without_check.isascii() or not digits_without_check.isdigit():
        raise ValueError("a GS1 code is made of ASCII digits")
    data = digits_without_check.encode("ascii")
    even = data[-1::-2]  # positions 2, 4, 6, ... counted with the check digit as 1
    odd = data[-2::-2]   # positions 3, 5, 7, ...
    a = sum(even) - 48 * len(even)
    b = sum(odd) - 48 * len(odd)
    return (10 - (3 * a + b) % 10) % 10


def is_valid_gs1_cvs_code(code: str) -> bool:
    """Whether ``code`` is a 44-digit コンビニ収納 code starting with AI ``91`` and a valid check digit."""
    return (len(code) == 44 and code.isascii() and code.isdigit() and code.startswith("91")
            and gs1_check_digit(code[:-1]) == int(code[-1]))

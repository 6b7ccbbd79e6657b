"""The class names. A model's classes come from its training data's rules (`data.classes` in the config,
the `classes` of a rules file) and travel in its checkpoint; the default is the classic four. Kept in a
module of its own so the quick paths (predict, serve) can use them without loading the config schema."""

from __future__ import annotations

import re

DEFAULT_CLASSES: tuple[str, ...] = ("beverages", "meats", "snacks", "desserts")
CLASSES = DEFAULT_CLASSES  # the demo set's and the classic recipe's: what synth writes
OTHER = "other"  # products in none of the named classes, learnt as a class of their own (`data build --other`)

_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,39}$")


def names_a_class(cell: str, classes: tuple[str, ...]) -> bool:
    """Whether a label cell (stripped) names one of the classes or gives its index. The seed's headerless
    rows start with one; a header does not."""
    # Not str.isdigit(): it accepts '¹', which int() refuses (found by the long fuzzing profile).
    return cell in classes or cell in {str(i) for i in range(len(classes))}


def class_problem(names: object) -> str | None:
    """Why a class list is unusable (None when it is fine): at least two names, each a short lowercase
    word (it becomes a CSV label, a `p_<class>` column and a JSON key), none twice."""
    if not isinstance(names, (list, tuple)) or len(names) < 2:
        return f"expected a list of at least two class names, got {names!r}"
    for name in names:
        if not isinstance(name, str) or not _NAME.match(name):
            return f"class name {name!r}: expected a lowercase word (letters, digits, - or _; at most 40)"
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        return f"class {twice[0]!r} is named twice"
    return None

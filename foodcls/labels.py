"""The class names, in index order. Kept in a module of its own so the quick paths (predict, serve) can
use them without loading the config schema; the features are in features.py."""

CLASSES: tuple[str, ...] = ("beverages", "meats", "snacks", "desserts")
